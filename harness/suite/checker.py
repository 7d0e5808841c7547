"""The checker every validation step is handed: where a key of the suite sits (file and line, or the
``--set`` / ``--add-reducer`` that put it there), the typed getters that refuse a value naming that place,
and the paths the suite needs and was not given (refused at once, for the cells that need them)."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from ..errors import SuiteError
from .source import SourceMap
from .spec import MODES


class Missing:
    """A ``${VAR}`` whose variable is not set."""

    def __init__(self, var: str):
        self.var = var

    def __repr__(self) -> str:
        return f"${{{self.var}}}"


class MissingPaths:
    """Paths a suite needs and was not given, by the entry that needs them."""

    def __init__(self):
        self.items: list[tuple[tuple, str]] = []

    def append(self, entry: tuple, message: str) -> None:
        self.items.append((tuple(entry), message))

    def has(self, entry: tuple) -> bool:
        return any(e == tuple(entry) for e, _ in self.items)

    def for_entries(self, used: set[tuple]) -> list[str]:
        return [m for e, m in self.items if e in used]


def close_hint(word: str, choices) -> str:
    """The hint "— did you mean 'x'?" for the closest of ``choices`` to a misspelt ``word`` ("" if none is)."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" — did you mean {close[0]!r}?" if close else ""


@dataclass
class Checker:
    """One suite being read: its tables (``raw``, after ``--set`` and ``${VAR}``), where each key came from,
    and whether paths on disk are checked (off for a suite listed, not run)."""

    raw: dict
    src: SourceMap
    file: str
    check_paths: bool = True
    from_set: dict[tuple, str] = field(default_factory=dict)  # path -> the flag that put it there
    missing: MissingPaths = field(default_factory=MissingPaths)

    # --- locating -----------------------------------------------------------------------------
    def where(self, path: tuple) -> str:
        path = tuple(path)
        for n in range(len(path), 0, -1):
            if path[:n] in self.from_set:
                return self.from_set[path[:n]]
        line = self.src.line(path)
        return f"{self.file}:{line}" if line else self.file

    def fail(self, path: tuple, msg: str) -> SuiteError:
        return SuiteError(f"{self.where(path)}: {msg}")

    def entry_name(self, section: str, i: int) -> str:
        e = self.raw.get(section, [])[i]
        ident = e.get("id") or e.get("name") or f"#{i + 1}"
        return f"[[{section}]] {ident!r}"

    def check_keys(self, table: dict, allowed, path: tuple, what: str) -> None:
        for k in table:
            if k not in allowed:
                raise self.fail(path + (k,), f"unknown key {k!r} in {what}{close_hint(k, allowed)} "
                                             f"(valid: {', '.join(allowed)})")

    # --- typed getters ------------------------------------------------------------------------
    def int_(self, path: tuple, v: Any, lo: int = 0) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise self.fail(path, f"{path[-1]} must be an integer ≥ {lo}, got {v!r}")
        return v

    def str_(self, path: tuple, v: Any, choices=None) -> str:
        if isinstance(v, Missing):
            raise self.fail(path, f"{path[-1]} reads ${{{v.var}}}, which is not set")
        if not isinstance(v, str):
            raise self.fail(path, f"{path[-1]} must be a string, got {v!r}")
        if choices is not None and v not in choices:
            raise self.fail(path, f"{path[-1]} must be one of {', '.join(choices)}; got {v!r}")
        return v

    def modes(self, path: tuple, v: Any) -> tuple[str, ...]:
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not v:
            raise self.fail(path, f"modes must be a list drawn from {', '.join(MODES)}, got {v!r}")
        for m in v:
            self.str_(path, m, MODES)
        return tuple(v)

    def ids(self, path: tuple, v: Any) -> tuple[str, ...]:
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise self.fail(path, f"{path[-1]} must be a list of ids, got {v!r}")
        return tuple(v)
