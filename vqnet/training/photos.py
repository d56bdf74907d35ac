"""Encoder outputs of whole training photos and of their mirror images, cached on disk.

Every fit that looks at the training photos (K-means usage counts, range-coding priors and context
tables, the concealment transformers' index maps) starts from these latents. Encoding is the slow
part (~1 s a photo on 2 cores), so it runs once per encoder, photo list and grid shift, and every
K, fine-tuned codebook or refit re-quantises the cache in seconds. Mirroring happens in pixel
space because a code is not mirror-symmetric: flipping an index grid does not give the grid of
the flipped photo, so a mirror image is a second, natural view of the same scene.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from vqnet.codec.bundle import Codec, encoder_fingerprint
from vqnet.images import load_image


def latent_cache(encoder_key: str, files: list[Path], shift: int = 0) -> Path:
    """Cache folder for one encoder, one photo list (names and sizes) and one ``encode_photos``
    shift, under runs/prior-data."""
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}:{f.stat().st_size}\n".encode())
    return Path("runs/prior-data") / f"{encoder_key}{f'-shift{shift}' if shift else ''}-{h.hexdigest()[:12]}"


def photo_views(
    codec: Codec, files: list[Path], shifts: Sequence[int] = (0,), progress: Callable[[int, int], None] | None = None
) -> list[torch.Tensor]:
    """Cached encoder outputs (:func:`encode_photos`: fp16, one (C, h, w) tensor per view) of every
    photo in ``files`` at each shift, photo-major: photo i's ``2 * len(shifts)`` views (itself and
    its mirror at each shift) come together, so a caller can hold a photo's views out together
    (their codes are far from independent). ``progress(done, total)`` counts photos over all
    shifts."""
    key = encoder_fingerprint(codec)
    per_shift = []
    for n, shift in enumerate(shifts):

        def step(i: int, total: int, done: int = n * len(files)) -> None:
            if progress:
                progress(done + i, len(shifts) * total)

        per_shift.append(encode_photos(codec, files, latent_cache(key, files, shift), progress=step, shift=shift))
    return [views[i] for photo in range(len(files)) for views in per_shift for i in (2 * photo, 2 * photo + 1)]


def encode_photos(
    codec: Codec,
    files: list[Path],
    cache: Path,
    shard: int = 50,
    progress: Callable[[int, int], None] | None = None,
    shift: int = 0,
) -> list[torch.Tensor]:
    """Encoder outputs (fp16) of every photo in ``files`` and of its mirror image.

    ``shift`` > 0 drops that many pixel rows and columns at the top left of both views first. Why:
    the f=16 grid then falls elsewhere on the same scene (8 px is half a token), so the codes are
    new index maps of natural statistics — data for the priors, which overfit 1,500 photos.

    Cached in the folder ``cache`` (the caller keys it by encoder and photo list) in shards of
    ``shard`` photos, written atomically as they finish, so an interrupted run resumes there.
    """
    cache.mkdir(parents=True, exist_ok=True)
    latents: list[torch.Tensor] = []
    for first in range(0, len(files), shard):
        path = cache / f"latents-{first:06d}.safetensors"
        if path.is_file():
            tensors = load_file(str(path))
            part = [tensors[f"z{i}"] for i in range(len(tensors))]
        else:
            part = []
            for f in files[first : first + shard]:
                img = load_image(f)
                for view in (img, img[:, ::-1]):
                    view = np.ascontiguousarray(view[shift:, shift:])
                    part.append(codec.encode_latent(view)[0].half().contiguous())
            tmp = path.with_suffix(".tmp")
            save_file({f"z{i}": z for i, z in enumerate(part)}, str(tmp))
            tmp.replace(path)
        latents += part
        if progress:
            progress(min(first + shard, len(files)), len(files))
    return latents
