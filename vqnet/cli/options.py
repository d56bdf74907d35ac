"""What several commands share: option help texts and checks, the device set-up, the output
folder's lock, and the notes a resumed job prints."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from vqnet.codec.bundle import Codec
    from vqnet.images import NamedImage
    from vqnet.journal import Journal

DEVICE_HELP = "Where to train: cpu, or cuda where a GPU is lent (the same recipe and data, much faster)."
MINUTES_HELP = "Stop after this many minutes of training, with a checkpoint (for a fixed GPU budget)."


def check_layout(layout: str) -> str:
    """``--layout``, refused in one line unless the packetizer has it."""
    if layout not in ("raster", "interleaved"):
        raise typer.BadParameter(f"--layout must be raster or interleaved, got {layout!r}")
    return layout


def check_device(device: str) -> str:
    """``--device`` as torch names it (``auto`` resolved), refused in one line when this machine
    has no such device."""
    from vqnet.runtime import resolve_device

    return str(resolve_device(device))


RUN_DEVICE_HELP = (
    "cpu | cuda[:N] | auto (a GPU when one is visible): where the codec, the concealment "
    "transformers and LPIPS run. A GPU's scores match the CPU's only to float tolerance."
)
PRECISION_HELP = (
    "float32 | bf16: the decoder's arithmetic. bf16 is refused where it is not fast (CPUs without "
    "AMX or AVX512-BF16); its tolerance is in docs/performance.md."
)


def placed(codec: Codec, device: str, precision: str = "float32") -> Codec:
    """``codec`` moved to ``device`` and set to decode in ``precision``, both checked first
    (:func:`vqnet.runtime.prepare`, which also sets this process up for them)."""
    from vqnet.runtime import prepare

    return codec.to(*prepare(device, precision))


WAIT_HELP = "When another vqnet job is writing to the same output folder, wait for it instead of refusing."


def locked_output(folder: Path, wait: bool) -> Path:
    """Create ``folder`` and hold its lock (:mod:`vqnet.lock`) until the command ends; another job
    there is refused in one line, or waited for with ``--wait``."""
    from typer._click.globals import get_current_context

    from vqnet.lock import locked_folder

    def waiting(holder: str) -> None:
        typer.echo(f"waiting for {folder} ({holder})", err=True)

    return get_current_context().with_resource(locked_folder(folder, wait, waiting))


def scorable(images: list[NamedImage]) -> list[NamedImage]:
    """``images``, refused in one line if LPIPS cannot score one of them (before any coding)."""
    from vqnet.metrics import require_lpips_size

    for image in images:
        require_lpips_size(*image.pixels.shape[:2], f"image {image.name}")
    return images


def note_dropped(journal: Journal) -> None:
    """Say on stderr how many damaged journal lines were not trusted (their units run again)."""
    if journal.dropped:
        typer.echo(
            f"note: {journal.dropped} damaged or repeated line(s) of {journal.path} ignored; their work is done again",
            err=True,
        )


CHROMA_HELP = (
    "Add the colour packet (vqnet/chroma.py): the image's chroma averaged over blocks of this many "
    "index cells squared (more where the packet would not fit --max-payload), which the receiver puts "
    "back under the decoder's luminance, following its detail. The bundled model decodes almost no "
    "colour without it. 0 = no colour packet."
)


def int_list(value: str, option: str = "--ks") -> list[int]:
    """``--ks 256,64,16`` -> [256, 64, 16] (any comma-separated integer option, named ``option``)."""
    try:
        return [int(k) for k in value.split(",") if k.strip()]
    except ValueError:
        raise typer.BadParameter(f"{option} must be comma-separated integers, got {value!r}") from None
