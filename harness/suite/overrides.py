"""Before validation: ``--set KEY=VALUE`` overrides and ``${VAR}`` environment variables, and the typed
getters every check uses (each failure names the file and line, or the ``--set``, at fault)."""
from __future__ import annotations

import difflib
import re
import tomllib
from typing import Any

from ..errors import SuiteError
from .source import SourceMap
from .spec import MODES, TOP_KEYS


class _Missing:
    """A ``${VAR}`` whose variable is not set."""

    def __init__(self, var: str):
        self.var = var

    def __repr__(self) -> str:
        return f"${{{self.var}}}"


class _MissingPaths:
    """Paths a suite needs and was not given, by the entry that needs them."""

    def __init__(self):
        self.items: list[tuple[tuple, str]] = []

    def append(self, entry: tuple, message: str) -> None:
        self.items.append((tuple(entry), message))

    def has(self, entry: tuple) -> bool:
        return any(e == tuple(entry) for e, _ in self.items)

    def for_entries(self, used: set[tuple]) -> list[str]:
        return [m for e, m in self.items if e in used]

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


_PREFIXED_INT = re.compile(r"[+-]?0[xob][0-9a-fA-F_]*")


def parse_value(text: str) -> Any:
    """A ``KEY=VALUE`` item's VALUE: read as TOML (``3``, ``true``, ``[1, 2]``, ``"x"``), else the plain string.
    TOML's hexadecimal, octal and binary integers stay strings: ``views=0x1`` means clips × crops."""
    if _PREFIXED_INT.fullmatch(text.strip()):
        return text
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


class _Checks:
    """The state of one suite being read, and the checks of single values."""

    def __init__(self, raw: dict, src: SourceMap, file: str, default_name: str, overrides: list[str],
                 env, check_paths: bool, only=(), check_device: bool = True, add_reducers=()):
        self.raw, self.src, self.file = raw, src, file
        self.default_name = default_name
        self.overrides = overrides
        self.env = env
        self.check_paths = check_paths
        self.check_device = check_device  # False where the cells run on other machines (Slurm)
        self.from_set: dict[tuple, str] = {}  # path -> the flag that put it there (--set …, --add-reducer …)
        self.add_reducers = list(add_reducers)
        self.missing = _MissingPaths()
        self.only = list(only)
        self.cell_entries: list[tuple[tuple, tuple]] = []  # per cell: its [[models]] and [[datasets]] entries

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
                close = difflib.get_close_matches(k, list(allowed), n=1)
                hint = f" — did you mean {close[0]!r}?" if close else ""
                raise self.fail(path + (k,), f"unknown key {k!r} in {what}{hint} "
                                             f"(valid: {', '.join(allowed)})")

    # --- typed getters ------------------------------------------------------------------------
    def _int(self, path: tuple, v: Any, lo: int = 0) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise self.fail(path, f"{path[-1]} must be an integer ≥ {lo}, got {v!r}")
        return v

    def _str(self, path: tuple, v: Any, choices=None) -> str:
        if isinstance(v, _Missing):
            raise self.fail(path, f"{path[-1]} reads ${{{v.var}}}, which is not set")
        if not isinstance(v, str):
            raise self.fail(path, f"{path[-1]} must be a string, got {v!r}")
        if choices is not None and v not in choices:
            raise self.fail(path, f"{path[-1]} must be one of {', '.join(choices)}; got {v!r}")
        return v

    def _modes(self, path: tuple, v: Any) -> tuple[str, ...]:
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not v:
            raise self.fail(path, f"modes must be a list drawn from {', '.join(MODES)}, got {v!r}")
        for m in v:
            self._str(path, m, MODES)
        return tuple(v)

    def _ids(self, path: tuple, v: Any) -> tuple[str, ...]:
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise self.fail(path, f"{path[-1]} must be a list of ids, got {v!r}")
        return tuple(v)

    def apply_overrides(self) -> None:
        alias = {"model": "models", "dataset": "datasets", "data": "datasets", "reducer": "reducers",
                 "default": "defaults"}
        for item in self.overrides:
            if "=" not in item:
                raise SuiteError(f"--set {item!r}: expected KEY=VALUE, e.g. defaults.repeats=3")
            key, value = item.split("=", 1)
            parts = [p.strip() for p in key.strip().split(".")]
            parts[0] = alias.get(parts[0], parts[0])
            value = parse_value(value.strip())
            sec = parts[0]
            if sec not in TOP_KEYS:
                raise SuiteError(f"--set {item}: unknown section {sec!r}; use one of "
                                 f"{', '.join(TOP_KEYS)} (e.g. defaults.repeats=3, models.vit_b.checkpoint=PATH)")
            if sec in ("models", "datasets", "reducers"):
                entries = self.raw.get(sec) or []
                if len(parts) == 3:
                    idx = [i for i, e in enumerate(entries) if parts[1] in (e.get("id"), e.get("name"))]
                    if not idx:
                        ids = sorted({str(e.get("id") or e.get("name")) for e in entries})
                        raise SuiteError(f"--set {item}: no [[{sec}]] entry {parts[1]!r}; entries: {', '.join(ids)}")
                    keyname = parts[2]
                elif len(parts) == 2:
                    idx, keyname = list(range(len(entries))), parts[1]
                else:
                    raise SuiteError(f"--set {item}: write {sec}.KEY=VALUE (every entry) or {sec}.ID.KEY=VALUE")
                for i in idx:
                    entries[i][keyname] = value
                    self.from_set[(sec, i, keyname)] = f"--set {item}"
            else:
                if len(parts) != 2:
                    raise SuiteError(f"--set {item}: write {sec}.KEY=VALUE")
                self.raw.setdefault(sec, {})[parts[1]] = value
                self.from_set[(sec, parts[1])] = f"--set {item}"
        self.add_reducer_entries()

    def add_reducer_entries(self) -> None:
        """``--add-reducer`` entries after the file's (and after ``--set``, which they are not part of)."""
        from .added import reducer_entry

        for spec in self.add_reducers:
            entries = self.raw.setdefault("reducers", [])
            if not isinstance(entries, list):
                raise SuiteError(f"--add-reducer {spec!r}: the suite's reducers are not [[reducers]] tables")
            entries.append(reducer_entry(spec))
            self.from_set[("reducers", len(entries) - 1)] = f"--add-reducer {spec!r}"
    def interpolate(self, obj: Any, path: tuple) -> Any:
        if isinstance(obj, dict):
            return {k: self.interpolate(v, path + (k,)) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.interpolate(v, path + (i,)) for i, v in enumerate(obj)]
        if isinstance(obj, str) and "${" in obj:
            missing: list[str] = []

            def sub(m: re.Match) -> str:
                var, default = m.group(1), m.group(2)
                val = self.env.get(var)
                if val is None or val == "":
                    if default is None:
                        missing.append(var)
                        return ""
                    return default
                return val

            out = _ENV.sub(sub, obj)
            if missing:
                return _Missing(missing[0])
            return out
        return obj
