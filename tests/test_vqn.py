"""The .vqn coded-image file: layout, strict reading, decoding with missing packets, and fuzzing
of the reader and the decode path (every input ends in a result, VqnError or PacketError)."""

from __future__ import annotations

import struct
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from vqnet.chroma import is_chroma_packet
from vqnet.cli import app
from vqnet.codec.bundle import Codebook, Codec, load_codec, save_codec
from vqnet.entropy import Prior
from vqnet.packets import Packet, PacketError
from vqnet.vqn import (
    HEADER_SIZE,
    MAX_PIXELS,
    VqnError,
    VqnFile,
    decode_vqn,
    drop_packets,
    encode_vqn,
    read_vqn,
    write_vqn,
)

K = 32
H, W = 36, 41  # the tiny codec has f=4: a 9x11 grid, decoded 44 wide and cropped back to 41
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def codec_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = tiny_model()
    cb = Codebook.from_model(model)
    cb.embedding = torch.randn(K, 8, generator=torch.Generator().manual_seed(1))  # many codes in use
    cb.prior = Prior.from_counts(np.arange(K, 0, -1))
    path = tmp_path_factory.mktemp("codec") / "tiny.safetensors"
    save_codec(Codec(model, {K: cb}), path)
    return path


@pytest.fixture(scope="module")
def codec(codec_file: Path) -> Codec:
    return load_codec(codec_file)


@pytest.fixture(scope="module")
def img() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def vqn(codec: Codec, img: np.ndarray) -> VqnFile:
    return encode_vqn(codec, img, K, max_payload=8, layout="interleaved")


def test_documented_byte_layout(vqn: VqnFile) -> None:
    data = write_vqn(vqn)
    assert data[:3] == b"VQN" and data[3] == 1 and data[4:12] == bytes.fromhex(vqn.model_id)
    assert struct.unpack_from("!HIIHBI", data, 12) == (K, H, W, 8, 1, len(vqn.packets))
    assert struct.unpack_from("!I", data, 29)[0] == zlib.crc32(data[:29]) and HEADER_SIZE == 33
    n0 = struct.unpack_from("!H", data, 33)[0]
    assert data[35 : 35 + n0] == vqn.packets[0]
    assert len(data) == 33 + sum(2 + len(p) for p in vqn.packets)
    assert read_vqn(data) == vqn


def test_full_file_decodes_like_the_codec(codec: Codec, img: np.ndarray, vqn: VqnFile) -> None:
    out = decode_vqn(codec, read_vqn(write_vqn(vqn)))
    np.testing.assert_array_equal(out.image, codec.decode(codec.encode(img, K), K, img.shape[:2]))
    assert out.missing == 0 and out.concealed == 0.0 and out.received.n_packets_bad == 0


def test_dropped_packets_are_concealed(codec: Codec, vqn: VqnFile) -> None:
    n = len(vqn.packets)
    assert n >= 10
    thinned = read_vqn(drop_packets(write_vqn(vqn), 0.3, seed=1))
    assert len(thinned.packets) == n - round(0.3 * n) and set(thinned.packets) < set(vqn.packets)
    out = decode_vqn(codec, thinned)
    assert out.image.shape == (H, W, 3) and out.missing == round(0.3 * n)
    assert 0.2 < out.concealed < 0.4  # interleaved: each packet holds ~1/n of the grid
    assert drop_packets(write_vqn(vqn), 0.3, seed=1) == drop_packets(write_vqn(vqn), 0.3, seed=1)
    nothing = decode_vqn(codec, read_vqn(drop_packets(write_vqn(vqn), 1.0, seed=0)))
    assert nothing.missing is None and nothing.concealed == 1.0 and nothing.image.shape == (H, W, 3)


def test_reordered_and_duplicated_packets_decode_the_same(codec: Codec, vqn: VqnFile) -> None:
    ref = decode_vqn(codec, vqn).image
    shuffled = list(vqn.packets)
    np.random.default_rng(2).shuffle(shuffled)
    for packets in (shuffled, list(vqn.packets) * 2):
        out = decode_vqn(codec, replace(vqn, packets=tuple(packets)))
        np.testing.assert_array_equal(out.image, ref)
        assert out.missing == 0 and out.received.n_packets_bad == 0


def test_packets_of_another_image_count_as_corrupt(codec: Codec, img: np.ndarray, vqn: VqnFile) -> None:
    other = encode_vqn(codec, img[:20, :24], K, max_payload=8, layout="raster")  # another grid
    mixed = replace(vqn, packets=other.packets + vqn.packets)
    out = decode_vqn(codec, mixed)
    np.testing.assert_array_equal(out.image, decode_vqn(codec, vqn).image)
    assert out.received.n_packets_bad == len(other.packets) and out.missing == 0


def test_model_and_version_mismatch_name_both(codec: Codec, vqn: VqnFile) -> None:
    foreign = replace(vqn, model_id="0123456789abcdef")
    with pytest.raises(VqnError, match=f"model 0123456789abcdef.*codec is {codec.model_id}"):
        decode_vqn(codec, read_vqn(write_vqn(foreign)))
    data = bytearray(write_vqn(vqn))
    data[3] = 2
    with pytest.raises(VqnError, match="version 2 is not supported.*reads version 1"):
        read_vqn(bytes(data))


@pytest.mark.parametrize(
    "field,value",
    [
        ("K", 1),
        ("height", 0),
        ("width", MAX_PIXELS + 1),
        ("max_payload", 7),
        ("max_payload", 65535),
        ("layout", "zigzag"),
        ("model_id", "unsaved"),
        ("packets", (b"",)),
    ],
)
def test_invalid_fields_are_refused(vqn: VqnFile, field: str, value: object) -> None:
    with pytest.raises(VqnError):
        replace(vqn, **{field: value})


def _forge_header(
    model_id: bytes = b"\x01" * 8,
    k: int = K,
    height: int = H,
    width: int = W,
    max_payload: int = 8,
    layout: int = 1,
    count: int = 0,
) -> bytes:
    fields = struct.pack("!3sB8sHIIHBI", b"VQN", 1, model_id, k, height, width, max_payload, layout, count)
    return fields + struct.pack("!I", zlib.crc32(fields))


def test_forged_huge_count_and_length_are_errors_without_allocation() -> None:
    with pytest.raises(VqnError, match="announces 4294967295 packets"):
        read_vqn(_forge_header(count=0xFFFFFFFF) + b"\x00\x05abcde")
    with pytest.raises(VqnError, match="truncated in packet 0"):
        read_vqn(_forge_header(count=1) + b"\xff\xffabc")
    with pytest.raises(VqnError, match="larger than"):
        read_vqn(_forge_header(height=0xFFFFFFFF, width=0xFFFFFFFF))
    with pytest.raises(VqnError, match="unexpected bytes"):
        read_vqn(_forge_header(count=0) + b"\x00")


@FUZZ
@given(st.one_of(st.binary(max_size=200), st.binary(max_size=200).map(lambda b: b"VQN\x01" + b)))
def test_random_bytes_are_a_vqn_error(data: bytes) -> None:
    with pytest.raises(VqnError):  # a valid header CRC by chance is a 1-in-4-billion event
        read_vqn(data)


@FUZZ
@given(bit=st.integers(0, 8 * HEADER_SIZE - 1), cut=st.integers(0, 10_000))
def test_header_bit_flips_and_truncations_are_vqn_errors(vqn: VqnFile, bit: int, cut: int) -> None:
    data = write_vqn(vqn)
    flipped = bytearray(data)
    flipped[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(VqnError):
        read_vqn(bytes(flipped))
    with pytest.raises(VqnError):
        read_vqn(data[: cut % len(data)])


@FUZZ
@given(
    k=st.integers(0, 0xFFFF),
    height=st.integers(0, 0xFFFFFFFF),
    width=st.integers(0, 0xFFFFFFFF),
    max_payload=st.integers(0, 0xFFFF),
    layout=st.integers(0, 255),
    count=st.integers(0, 0xFFFFFFFF),
    tail=st.binary(max_size=64),
)
def test_forged_headers_with_valid_crc(
    k: int, height: int, width: int, max_payload: int, layout: int, count: int, tail: bytes
) -> None:
    try:
        got = read_vqn(_forge_header(b"\x02" * 8, k, height, width, max_payload, layout, count) + tail)
    except VqnError:
        return
    assert len(got.packets) == count and sum(2 + len(p) for p in got.packets) == len(tail)


@FUZZ
@given(
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=4),
    cut=st.none() | st.integers(0, 10**6),
    tail=st.binary(max_size=6),
)
def test_mutated_files_end_in_an_image_or_a_clean_error(
    codec: Codec, vqn: VqnFile, flips: list[tuple[int, int]], cut: int | None, tail: bytes
) -> None:
    data = bytearray(write_vqn(vqn))
    for pos, mask in flips:
        data[pos % len(data)] ^= mask
    mutated = bytes(data[: None if cut is None else cut % len(data)]) + tail
    try:
        out = decode_vqn(codec, read_vqn(mutated))
    except (VqnError, PacketError):
        return
    assert out.image.shape == (H, W, 3) and out.image.dtype == np.uint8


@st.composite
def _hostile_packets(draw: st.DrawFn, vqn: VqnFile) -> list[bytes]:
    """The file's packets duplicated, reordered and dropped, plus forged packets with valid CRCs
    (out-of-range numbers, other grids, other K) and plain garbage."""
    real = list(vqn.packets)
    picks = draw(st.lists(st.integers(0, len(real) - 1), max_size=2 * len(real)))
    packets = [real[i] for i in picks]
    for _ in range(draw(st.integers(0, 4))):
        count = draw(st.integers(1, 0xFFFF))
        h, w = draw(st.sampled_from([(9, 11), (1, 1), (3, 40)]))
        number = draw(st.integers(0, count - 1))
        n = len(range(number, h * w, count))
        payload = b"".join(draw(st.lists(st.binary(min_size=4, max_size=4), min_size=1, max_size=3)))
        try:
            forged = Packet(
                layout="interleaved",
                image_id=draw(st.integers(0, 1)),
                K=draw(st.sampled_from([K, 16])),
                h=h,
                w=w,
                packet_number=number,
                packet_count=count,
                n=n,
                payload=payload,
            ).to_bytes()
        except PacketError:  # e.g. no position left for that number
            forged = draw(st.binary(min_size=1, max_size=60))
        packets.insert(draw(st.integers(0, len(packets))), forged)
    return packets


@FUZZ
@given(data=st.data())
def test_duplicated_reordered_and_forged_packets_decode(codec: Codec, vqn: VqnFile, data: st.DataObject) -> None:
    packets = data.draw(_hostile_packets(vqn))
    out = decode_vqn(codec, read_vqn(write_vqn(replace(vqn, packets=tuple(packets)))))
    got = out.received
    assert out.image.shape == (H, W, 3)
    assert got.n_packets_ok + got.n_packets_bad <= len(packets)
    assert np.all((got.indices[~got.lost] >= 0) & (got.indices[~got.lost] < K))


def _cli(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, list(args))
    return res.exit_code, res.output


def test_cli_encode_drop_decode(codec_file: Path, img: np.ndarray, tmp_path: Path) -> None:
    Image.fromarray(img).save(tmp_path / "in.png")
    code, out = _cli(
        "encode",
        str(tmp_path / "in.png"),
        "-o",
        str(tmp_path / "a.vqn"),
        "--K",
        str(K),
        "--model",
        str(codec_file),
        "--max-payload",
        "8",
        "--layout",
        "raster",
    )
    assert code == 0, out
    size = (tmp_path / "a.vqn").stat().st_size
    assert f"{size} bytes" in out and f"{size * 8 / (H * (W)):.4f} bpp" in out
    full = read_vqn((tmp_path / "a.vqn").read_bytes())
    assert sum(map(is_chroma_packet, full.packets)) == 1  # the colour packet comes by default
    n = len(full.packets) - 1
    (tmp_path / "b.vqn").write_bytes(drop_packets((tmp_path / "a.vqn").read_bytes(), 0.3, seed=3))
    kept = read_vqn((tmp_path / "b.vqn").read_bytes()).packets
    colour = any(map(is_chroma_packet, kept))
    code, out = _cli(
        "decode",
        str(tmp_path / "b.vqn"),
        "-o",
        str(tmp_path / "b.png"),
        "--model",
        str(codec_file),
        "--method",
        "neighbor",
    )
    assert code == 0, out
    present = len(kept) - colour
    assert f"{present} present, {n - present} missing of {n}, 0 corrupt" in out and "concealed" in out
    assert ("colour: from the chroma packet" in out) == colour
    assert np.asarray(Image.open(tmp_path / "b.png")).shape == (H, W, 3)


@pytest.mark.parametrize(
    "content,needle", [(b"garbage", "not a .vqn file"), (b"VQN\x01" + b"\x00" * 40, "CRC"), (b"VQN\x07", "version 7")]
)
def test_cli_decode_bad_file_is_one_error_line(codec_file: Path, tmp_path: Path, content: bytes, needle: str) -> None:
    (tmp_path / "x.vqn").write_bytes(content)
    code, out = _cli("decode", str(tmp_path / "x.vqn"), "-o", str(tmp_path / "x.png"), "--model", str(codec_file))
    assert code == 2 and out.startswith("Error: ") and needle in out and len(out.strip().splitlines()) == 1
    assert not (tmp_path / "x.png").exists()


def test_cli_decode_with_another_model_names_both(codec_file: Path, vqn: VqnFile, tmp_path: Path) -> None:
    (tmp_path / "f.vqn").write_bytes(write_vqn(replace(vqn, model_id="00000000000000ff")))
    code, out = _cli("decode", str(tmp_path / "f.vqn"), "-o", str(tmp_path / "f.png"), "--model", str(codec_file))
    assert code == 2 and "00000000000000ff" in out and vqn.model_id in out
