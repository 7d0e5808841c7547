"""Paths built from record or suite contents, kept inside the folder they belong to.

A suite name, a fingerprint id or a cell key comes from a file a user (or anyone who can write a records
file) controls. :func:`safe_name` turns any such string into one harmless path component, and
:func:`inside` builds a path under a root and refuses one that would land outside it (``..``, an absolute
part, a symlink leading out). The results store and the report build every such path through these two.
"""
from __future__ import annotations

import re
from pathlib import Path

MAX_NAME = 120


class UnsafePathError(ValueError):
    """A path built from record or suite contents would leave its root folder."""


def safe_name(name: object) -> str:
    """``name`` as one path component: letters, digits and ``. _ + -`` only (every other run of characters
    becomes ``_``), no leading or trailing dot or underscore, at most 120 characters. Never empty, never
    ``.`` or ``..``: ``".."`` → ``"_"``, ``"my suite"`` → ``"my_suite"``."""
    out = re.sub(r"[^A-Za-z0-9._+\-]+", "_", str(name)).strip("._")[:MAX_NAME].strip("._")
    return out or "_"


def inside(root: str | Path, *parts: str | Path) -> Path:
    """``root / parts…``, checked to resolve inside ``root`` (symlinks followed); raises
    :class:`UnsafePathError` naming both paths otherwise. ``root`` need not exist yet."""
    root = Path(root)
    path = root.joinpath(*parts)
    base = root.resolve()
    target = path.resolve()
    if target != base and base not in target.parents:
        raise UnsafePathError(f"refusing to use {path}: it resolves to {target}, outside {base}")
    return path
