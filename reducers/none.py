"""``none`` — the baseline: every tubelet becomes a token and every token lives through every block."""
from __future__ import annotations

from dataclasses import dataclass

from .base import Reducer
from .registry import register_reducer


@register_reducer("none")
@dataclass(repr=False)
class NoReducer(Reducer):
    """Keeps every token. The reference every speedup and Δtop-1 is measured against."""

    identity = True
