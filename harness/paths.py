"""Paths built from record or suite contents, kept inside the folder they belong to.

A suite name, a fingerprint id or a cell key comes from a file a user (or anyone who can write a records
file) controls. :func:`safe_name` turns any such string into one harmless path component, and
:func:`inside` builds a path under a root and refuses one that would land outside it (``..``, an absolute
part, a symlink leading out). The results store and the report build every such path through these two.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .errors import UserError

MAX_NAME = 120


class UnsafePathError(UserError, ValueError):
    """A path built from record or suite contents would leave its root folder (a user's mistake, or a
    symlink planted in the folder: one line on the command line, not a traceback)."""


def cache_root() -> Path:
    """Where tokenbench caches what it builds or trains once: ``$TOKENBENCH_CACHE``, else
    ``~/.cache/tokenbench``."""
    root = os.environ.get("TOKENBENCH_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "tokenbench"


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


WRITTEN_MANIFEST = ".tokenbench-written.json"


class WrittenFiles:
    """The files a generator wrote under ``root`` on its previous run, kept in ``root/.tokenbench-written.json``,
    so that a rebuild removes only files it wrote itself and never a file someone else put there.

    >>> owned = WrittenFiles(root)                        # doctest: +SKIP
    >>> for p in owned.stale(expected): p.unlink()        # written last time, not produced now
    >>> owned.save(expected)                              # after writing them
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.previous: set[str] = set()
        try:
            data = json.loads(inside(self.root, WRITTEN_MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return  # no manifest (a first run, or a report from before manifests): nothing is ours to delete
        if isinstance(data, dict) and isinstance(data.get("files"), list):
            self.previous = {f for f in data["files"] if isinstance(f, str)}

    def stale(self, expected: set[str]) -> list[Path]:
        """Files written last time that ``expected`` (paths relative to root) no longer lists and that still
        exist; an entry that would resolve outside root is never returned."""
        out = []
        for rel in sorted(self.previous - set(expected)):
            try:
                p = inside(self.root, rel)
            except UnsafePathError:
                continue
            if p.is_file() and not p.is_symlink():
                out.append(p)
        return out

    def save(self, files: set[str]) -> Path:
        path = inside(self.root, WRITTEN_MANIFEST)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"files": sorted(files)}, indent=1) + "\n", encoding="utf-8")
        return path


def distinct_names(names: list[str] | set[str], what: str = "suites") -> dict[str, str]:
    """``{name: safe_name(name)}``, refusing (:class:`UnsafePathError`) two names that would share one folder
    (``".."`` and ``"."`` both become ``_``): one would silently overwrite the other."""
    out: dict[str, str] = {}
    seen: dict[str, str] = {}
    for name in sorted(names):
        safe = safe_name(name)
        if safe in seen:
            raise UnsafePathError(f"{what} {seen[safe]!r} and {name!r} would share the folder {safe!r}; "
                                  "rename one of them")
        seen[safe] = out[name] = safe
    return out
