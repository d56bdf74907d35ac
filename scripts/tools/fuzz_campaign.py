"""Fuzz campaign for the receive path, too long for the test suite (which runs the same kinds of
inputs through hypothesis at ~300 examples per test).

Each of N inputs is random bytes or a mutation of a valid ``.vqn`` file and goes through
``read_vqn``, then ``Packet.from_bytes`` + ``entropy.decode`` per packet, then ``depacketize``
(with the header's grid and K, as ``vqnet decode`` calls it, and with nothing given). Every step
must end in a result or its own error (VqnError, PacketError, EntropyError); the campaign counts
outcomes by step and type and exits 1 if any other exception escaped or any single input took
longer than ``--max-seconds``. Input i is generated from ``(seed, i)`` alone, so a failure is
reproduced with ``--first i --n 1``.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/tools/fuzz_campaign.py --n 100000

With ``--cli`` the campaign drives the ``vqnet`` command line itself instead (``scripts/tools/fuzz_cli.py``:
options, images of every mode and damage, mutated ``.vqn`` files, hostile scenarios, damaged
journals resumed), e.g. ``--cli --n 400 --max-seconds 60``.
"""

from __future__ import annotations

import argparse
import functools
import random
import struct
import sys
import time
import traceback
import zlib
from collections import Counter
from collections.abc import Callable

import numpy as np

from vqnet import entropy
from vqnet.entropy import EntropyError, Prior
from vqnet.packets import Packet, PacketError, context_refs, depacketize, packetize
from vqnet.vqn import HEADER_SIZE, VqnError, VqnFile, read_vqn, write_vqn

F = 16  # the grid <-> pixel factor assumed for the corpus (the default codec's)
MODEL_ID = "00112233445566ff"


def _skewed(K: int, seed: int) -> Prior:
    d = np.random.default_rng(seed).dirichlet(np.full(K, 0.3))
    return Prior(0.99 * d + 0.01 / K)


CORPUS_PRIORS = {K: _skewed(K, K) for K in (2, 16, 1024)}


@functools.lru_cache(maxsize=256)
def prior_for(K: int) -> Prior:
    """The corpus prior for K, or a uniform one for a forged K (any prior must be survivable)."""
    return CORPUS_PRIORS.get(K) or Prior.uniform(K)


def build_corpus() -> list[bytes]:
    """Valid files over both layouts, tiny to medium grids, small and large packets."""
    rng = np.random.default_rng(0)
    files = []
    for K, prior in CORPUS_PRIORS.items():
        for layout in ("raster", "interleaved"):
            for (gh, gw), max_payload in (((1, 1), 8), ((9, 11), 8), ((9, 11), 24), ((20, 30), 100)):
                grid = rng.choice(K, size=(gh, gw), p=prior.probs)
                packets = packetize(grid, prior, max_payload, layout=layout, image_id=int(rng.integers(0, 3)))
                files.append(write_vqn(VqnFile(MODEL_ID, K, gh * F - 3, gw * F, max_payload, layout, tuple(packets))))
    return files


# --- mutators: each takes (rng, corpus) and returns one input -------------------------------


def _records(data: bytes) -> tuple[bytes, list[bytes]]:
    vqn = read_vqn(data)
    return data[:HEADER_SIZE], list(vqn.packets)


def _reframe(header: bytes, packets: list[bytes]) -> bytes:
    """A header with its count set to len(packets) and the CRC recomputed, then the records."""
    fields = bytearray(header[: HEADER_SIZE - 4])
    struct.pack_into("!I", fields, 25, len(packets))
    body = b"".join(struct.pack("!H", len(p)) + p for p in packets if 1 <= len(p) <= 0xFFFF)
    return bytes(fields) + struct.pack("!I", zlib.crc32(fields)) + body


def _extreme(r: random.Random, bits: int) -> int:
    top = (1 << bits) - 1
    return r.choice([0, 1, 2, top, top - 1, top // 2, r.randint(0, top), r.randint(0, 64)])


def m_random(r: random.Random, corpus: list[bytes]) -> bytes:
    data = r.randbytes(r.randint(0, 300))
    return (b"VQN\x01" + data) if r.random() < 0.5 else data


def m_bitflips(r: random.Random, corpus: list[bytes]) -> bytes:
    data = bytearray(r.choice(corpus))
    for _ in range(r.randint(1, 8)):
        data[r.randrange(len(data))] ^= 1 << r.randrange(8)
    return bytes(data)


def m_bytes(r: random.Random, corpus: list[bytes]) -> bytes:
    data = bytearray(r.choice(corpus))
    for _ in range(r.randint(1, 4)):
        data[r.randrange(len(data))] = r.choice([0, 0xFF, 0x7F, 0x80, r.randrange(256)])
    return bytes(data)


def m_truncate(r: random.Random, corpus: list[bytes]) -> bytes:
    data = r.choice(corpus)
    return data[: r.randrange(len(data))]


def m_extend(r: random.Random, corpus: list[bytes]) -> bytes:
    return r.choice(corpus) + r.randbytes(r.randint(1, 64))


def m_splice(r: random.Random, corpus: list[bytes]) -> bytes:
    a, b = r.choice(corpus), r.choice(corpus)
    return a[: r.randrange(len(a) + 1)] + b[r.randrange(len(b) + 1) :]


def m_header_field(r: random.Random, corpus: list[bytes]) -> bytes:
    """One header field forged (often to an extreme), header CRC recomputed."""
    data = bytearray(r.choice(corpus))
    offset, fmt = r.choice([(3, "B"), (12, "H"), (14, "I"), (18, "I"), (22, "H"), (24, "B"), (25, "I")])
    struct.pack_into("!" + fmt, data, offset, _extreme(r, 8 * struct.calcsize(fmt)))
    struct.pack_into("!I", data, HEADER_SIZE - 4, zlib.crc32(bytes(data[: HEADER_SIZE - 4])))
    return bytes(data)


def m_record_length(r: random.Random, corpus: list[bytes]) -> bytes:
    """A record length forged: the header is intact, the framing is not."""
    data = bytearray(r.choice(corpus))
    header, packets = _records(bytes(data))
    if not packets:
        return bytes(data)
    i = r.randrange(len(packets))
    pos = HEADER_SIZE + sum(2 + len(p) for p in packets[:i])
    struct.pack_into("!H", data, pos, _extreme(r, 16))
    return bytes(data)


def m_records(r: random.Random, corpus: list[bytes]) -> bytes:
    """Records duplicated, reordered, dropped, or taken from another file; framing kept valid."""
    header, packets = _records(r.choice(corpus))
    _, other = _records(r.choice(corpus))
    for _ in range(r.randint(1, 4)):
        op = r.randrange(4)
        if op == 0 and packets:
            packets.insert(r.randrange(len(packets) + 1), r.choice(packets))
        elif op == 1:
            r.shuffle(packets)
        elif op == 2 and packets:
            del packets[r.randrange(len(packets))]
        elif other:
            packets.insert(r.randrange(len(packets) + 1), r.choice(other))
    return _reframe(header, packets)


_PACKET_FIELDS = [
    (2, "B"),
    (3, "B"),
    (4, "I"),
    (8, "H"),
    (10, "H"),
    (12, "H"),
    (14, "H"),
    (16, "H"),
    (18, "I"),
    (22, "I"),
    (22, "H"),
    (26, "H"),
]


def m_packet_forge(r: random.Random, corpus: list[bytes]) -> bytes:
    """Packets with forged header fields or payload bytes and a *valid* packet CRC, so the
    validation behind the CRC (field ranges, positions, entropy decoding) is what gets tested."""
    header, packets = _records(r.choice(corpus))
    if not packets:
        return _reframe(header, packets)
    for _ in range(r.randint(1, 3)):
        i = r.randrange(len(packets))
        body = bytearray(packets[i][:-4])
        if r.random() < 0.6 and len(body) >= 28:
            offset, fmt = r.choice(_PACKET_FIELDS)
            struct.pack_into("!" + fmt, body, offset, _extreme(r, 8 * struct.calcsize(fmt)))
        elif r.random() < 0.5:
            body += r.randbytes(4 * r.randint(1, 8))  # longer payload (payload_len left stale or not)
        else:
            for _ in range(r.randint(1, 4)):
                body[r.randrange(len(body))] = r.randrange(256)
        packets[i] = bytes(body) + struct.pack("!I", zlib.crc32(bytes(body)))
    return _reframe(header, packets)


MUTATORS: dict[str, Callable[[random.Random, list[bytes]], bytes]] = {
    f.__name__[2:]: f
    for f in (
        m_random,
        m_bitflips,
        m_bytes,
        m_truncate,
        m_extend,
        m_splice,
        m_header_field,
        m_record_length,
        m_records,
        m_packet_forge,
    )
}


def make_input(seed: int, i: int, corpus: list[bytes]) -> tuple[str, bytes]:
    """Input i: one mutator, sometimes applied on top of another's output."""
    r = random.Random((seed << 40) | i)
    name = r.choice(list(MUTATORS))
    data = MUTATORS[name](r, corpus)
    if data and r.random() < 0.2 and name not in ("random", "truncate"):  # stack a byte-level mutation
        data = MUTATORS[r.choice(["bitflips", "bytes", "extend"])](r, [data])
    return name, data


def run_one(data: bytes, counts: Counter[str]) -> None:
    """The receive path on one input; expected errors are counted, anything else propagates."""
    try:
        vqn = read_vqn(data)
    except VqnError:
        counts["read_vqn: VqnError"] += 1
        return
    counts["read_vqn: ok"] += 1
    for raw in vqn.packets:
        try:
            pkt = Packet.from_bytes(raw)
        except PacketError:
            counts["Packet.from_bytes: PacketError"] += 1
            continue
        counts["Packet.from_bytes: ok"] += 1
        try:
            entropy.decode(pkt.payload, pkt.n, prior_for(pkt.K), context_refs(pkt.positions(), pkt.w))
            counts["entropy.decode: ok"] += 1
        except EntropyError:
            counts["entropy.decode: EntropyError"] += 1
    shape = (-(-vqn.height // F), -(-vqn.width // F))
    for label, kwargs in (("depacketize(shape, K)", {"shape": shape, "K": vqn.K}), ("depacketize()", {})):
        try:
            got = depacketize(vqn.packets, prior_for, **kwargs)
            counts[f"{label}: ok"] += 1
            if got.lost.any():
                counts[f"{label}: ok with lost indices"] += 1
        except PacketError:
            counts[f"{label}: PacketError"] += 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="inputs to run")
    ap.add_argument("--first", type=int, default=0, help="index of the first input (to reproduce one)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-seconds", type=float, default=1.0, help="slowest acceptable single input")
    ap.add_argument("--cli", action="store_true", help="fuzz the vqnet command line (scripts/tools/fuzz_cli.py)")
    args = ap.parse_args()
    if args.cli:
        from fuzz_cli import run

        return run(args.n, args.first, args.seed, args.max_seconds)

    corpus = build_corpus()
    counts: Counter[str] = Counter()
    by_mutator: Counter[str] = Counter()
    failures: list[str] = []
    slow: list[str] = []
    slowest = (0.0, -1)
    t_start = time.perf_counter()
    for i in range(args.first, args.first + args.n):
        name, data = make_input(args.seed, i, corpus)
        by_mutator[name] += 1
        t0 = time.perf_counter()
        try:
            run_one(data, counts)
        except Exception as exc:  # noqa: BLE001 - escaping exceptions are exactly what we hunt
            counts[f"UNEXPECTED {type(exc).__name__}"] += 1
            failures.append(
                f"input {i} ({name}): {type(exc).__name__}: {exc}\n{traceback.format_exc()}input hex: {data.hex()}"
            )
        dt = time.perf_counter() - t0
        slowest = max(slowest, (dt, i))
        if dt > args.max_seconds:
            slow.append(f"input {i} ({name}) took {dt:.2f} s")
        if (i - args.first + 1) % 10_000 == 0:
            print(f"  {i - args.first + 1} inputs, {time.perf_counter() - t_start:.0f} s", file=sys.stderr, flush=True)

    print(
        f"{args.n} inputs (seed {args.seed}, first {args.first}) in {time.perf_counter() - t_start:.1f} s; "
        f"slowest input {slowest[1]}: {1000 * slowest[0]:.1f} ms"
    )
    print("inputs by mutator:")
    for name, n in sorted(by_mutator.items()):
        print(f"  {name:<16} {n}")
    print("outcomes:")
    for key, n in sorted(counts.items()):
        print(f"  {key:<45} {n}")
    for line in failures[:10] + slow[:10]:
        print(line, file=sys.stderr)
    if failures or slow:
        print(
            f"FAIL: {len(failures)} unexpected exceptions, {len(slow)} inputs over {args.max_seconds} s",
            file=sys.stderr,
        )
        return 1
    print("OK: every input ended in a result or VqnError/PacketError/EntropyError")
    return 0


if __name__ == "__main__":
    sys.exit(main())
