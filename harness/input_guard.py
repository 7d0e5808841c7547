"""The clips a reducer is given stay the clips it was given: a reducer's ``select`` (the one hook that sees the
video) that writes into its input in place would otherwise change the clips every later arm, repeat and cell
is measured on — the interleaved baseline would time the mutated clips, and nothing would notice. (The
accuracy pass is safe by construction: each batch there is a fresh float copy of the cached uint8 clips.)

Detected, not prevented: each timed clip batch is hashed before the timed runs and again after them,
outside the timed region, and a changed batch fails the cell naming the reducer and its hook. A copy per call
would have to sit inside the timed region (``model(video, reducer)`` calls ``select``) and cost every cell
what one bad plugin needs; two hashes a batch per pass cost far less than one forward of it.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import Tensor

from .errors import CellError


class InputMutatedError(CellError):
    """A reducer wrote into the clips it was given."""


def digest(batch: Tensor) -> str:
    """A hash of the tensor's bytes (its device's copy brought to the CPU)."""
    flat = batch.detach().contiguous().reshape(-1)
    raw = flat.view(torch.uint8) if flat.numel() else flat
    return hashlib.blake2b(raw.cpu().numpy().tobytes(), digest_size=16).hexdigest()


def digests(batches: Sequence[Tensor]) -> list[str]:
    return [digest(b) for b in batches]


def check_unchanged(before: list[str], batches: Sequence[Tensor], reducer, where: str) -> None:
    """Raise :class:`InputMutatedError` when a batch no longer hashes as it did (``before``); ``where``
    names the pass."""
    if reducer.identity:  # the baseline never sees the video's values, and was not hashed
        return
    changed = [i for i, (h, b) in enumerate(zip(before, batches)) if digest(b) != h]
    if changed:
        raise InputMutatedError(
            f"reducer {getattr(reducer, 'name', '') or type(reducer).__name__!r} wrote into its input video in place "
            f"(its select hook, during {where}: {len(changed)} of {len(batches)} batches changed); every later "
            "arm would time other clips — select must not modify the video (clone it first)")
