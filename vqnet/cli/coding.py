"""``vqnet encode`` and ``vqnet decode``: one image to a .vqn file of packets and back."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vqnet.chroma import CELLS, MAX_CELLS
from vqnet.cli.errors import user_errors
from vqnet.cli.options import CHROMA_HELP, PRECISION_HELP, RUN_DEVICE_HELP, check_layout, placed


def encode(
    image: Annotated[Path, typer.Argument(help="Image to encode (any format PIL reads).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The .vqn file to write.")],
    K: Annotated[int, typer.Option("--K", help="Codebook size (must exist in the model).")] = 256,
    model: Annotated[Path | None, typer.Option(help="Codec bundle (default: the bundled model).")] = None,
    max_payload: Annotated[int, typer.Option(help="Max range-coded bytes per packet (headers come on top).")] = 24,
    layout: Annotated[str, typer.Option(help="raster | interleaved (see vqnet/packets.py).")] = "interleaved",
    chroma_cells: Annotated[int, typer.Option(min=0, max=MAX_CELLS, help=CHROMA_HELP)] = CELLS,
    device: Annotated[
        str,
        typer.Option(
            help="cpu | cuda[:N] | auto: where the encoder runs (always in float32: the indices are what is sent)."
        ),
    ] = "cpu",
) -> None:
    """Encode an image into a .vqn file of independently decodable packets; print its size and bpp."""
    with user_errors():
        check_layout(layout)
        from vqnet.chroma import is_chroma_packet
        from vqnet.codec.bundle import load_codec
        from vqnet.images import codable_pixels, load_image
        from vqnet.metrics import bpp
        from vqnet.vqn import encode_vqn, write_vqn

        codec = placed(load_codec(model), device)
        pixels = load_image(image, codable_pixels(codec.factor))
        vqn = encode_vqn(codec, pixels, K, max_payload, layout, chroma_cells)  # type: ignore[arg-type]
        data = write_vqn(vqn)
        output.write_bytes(data)
        colour = sum(map(is_chroma_packet, vqn.packets))
        typer.echo(
            f"wrote {output}: {len(data)} bytes, {len(vqn.packets)} packets ({colour} of them colour), "
            f"{bpp(len(data), vqn.height, vqn.width):.4f} bpp ({vqn.width}x{vqn.height}, K={K}, "
            f"model {codec.model_id})"
        )


def decode(
    vqn_file: Annotated[Path, typer.Argument(metavar="FILE.vqn", help="A .vqn file, possibly missing packets.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Image to write (format from the suffix).")],
    method: Annotated[
        str,
        typer.Option(
            help="Concealment for missing indices: none | neighbor | ar | ar-mbr | masked "
            "(the last three need that K's transformer beside the codec; "
            "the bundled model has them for K=256)."
        ),
    ] = "neighbor",
    model: Annotated[Path | None, typer.Option(help="Codec bundle the file was made with (default: bundled).")] = None,
    device: Annotated[str, typer.Option(help=RUN_DEVICE_HELP)] = "cpu",
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = "float32",
) -> None:
    """Decode a .vqn file, concealing what missing or damaged packets held; print what was lost."""
    with user_errors():
        from vqnet.codec.bundle import load_codec
        from vqnet.images import require_codable, save_image
        from vqnet.restore import METHODS
        from vqnet.vqn import decode_vqn, read_vqn

        if method not in METHODS:
            raise typer.BadParameter(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
        vqn = read_vqn(vqn_file.read_bytes(), str(vqn_file))
        codec = placed(load_codec(model), device, precision)
        require_codable(vqn.height, vqn.width, str(vqn_file), codec.factor)
        out = decode_vqn(codec, vqn, method)
        save_image(output, out.image)
        got = out.received
        expected = "?" if got.n_packets_expected is None else got.n_packets_expected
        missing = "all" if out.missing is None else out.missing
        typer.echo(
            f"packets: {got.n_packets_ok} present, {missing} missing of {expected}, "
            f"{got.n_packets_bad} corrupt (of {len(vqn.packets)} in the file)"
        )
        typer.echo(
            "colour: "
            + (
                f"from the chroma packet ({out.chroma_cells}x{out.chroma_cells} index cells a sample)"
                if out.chroma_cells
                else "the decoder's own (no intact chroma packet)"
            )
        )
        typer.echo(f"concealed {out.concealed:.1%} of indices with {method}; wrote {output}")
