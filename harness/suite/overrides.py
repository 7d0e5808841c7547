"""Before validation: ``--set KEY=VALUE`` overrides, ``--add-reducer`` entries and ``${VAR}`` environment
variables, applied to the suite's parsed tables."""
from __future__ import annotations

import re
import tomllib
from typing import Any

from ..errors import SuiteError
from .checker import Missing
from .spec import TOP_KEYS

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


def apply_overrides(raw: dict, overrides: list[str], add_reducers: list[str]) -> dict[tuple, str]:
    """Apply ``--set`` items, then add ``--add-reducer`` entries, to ``raw`` in place; returns where each
    path they set came from (the flag, for error messages)."""
    from_set: dict[tuple, str] = {}
    alias = {"model": "models", "dataset": "datasets", "data": "datasets", "reducer": "reducers",
             "default": "defaults"}
    for item in overrides:
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
            entries = raw.get(sec) or []
            if len(parts) == 3:
                idx = [i for i, e in enumerate(entries) if parts[1] in (e.get("id"), e.get("name"))]
                if not idx:
                    ids = sorted({str(e.get("id") or e.get("name")) for e in entries})
                    raise SuiteError(f"--set {item}: no [[{sec}]] entry {parts[1]!r}; entries: "
                                     f"{', '.join(ids)}")
                keyname = parts[2]
            elif len(parts) == 2:
                idx, keyname = list(range(len(entries))), parts[1]
            else:
                raise SuiteError(f"--set {item}: write {sec}.KEY=VALUE (every entry) or {sec}.ID.KEY=VALUE")
            for i in idx:
                entries[i][keyname] = value
                from_set[(sec, i, keyname)] = f"--set {item}"
        else:
            if len(parts) != 2:
                raise SuiteError(f"--set {item}: write {sec}.KEY=VALUE")
            raw.setdefault(sec, {})[parts[1]] = value
            from_set[(sec, parts[1])] = f"--set {item}"
    add_reducer_entries(raw, add_reducers, from_set)
    return from_set


def add_reducer_entries(raw: dict, add_reducers: list[str], from_set: dict[tuple, str]) -> None:
    """``--add-reducer`` entries after the file's (and after ``--set``, which they are not part of)."""
    from .added import reducer_entry

    for spec in add_reducers:
        entries = raw.setdefault("reducers", [])
        if not isinstance(entries, list):
            raise SuiteError(f"--add-reducer {spec!r}: the suite's reducers are not [[reducers]] tables")
        entries.append(reducer_entry(spec))
        from_set[("reducers", len(entries) - 1)] = f"--add-reducer {spec!r}"


def interpolate(obj: Any, env) -> Any:
    """``obj`` with each ``${VAR}`` / ``${VAR:-default}`` string filled from ``env``; a string whose variable
    is unset and has no default becomes :class:`Missing` (refused where a value is read, or collected as a
    path the suite needs)."""
    if isinstance(obj, dict):
        return {k: interpolate(v, env) for k, v in obj.items()}
    if isinstance(obj, list):
        return [interpolate(v, env) for v in obj]
    if isinstance(obj, str) and "${" in obj:
        missing: list[str] = []

        def sub(m: re.Match) -> str:
            var, default = m.group(1), m.group(2)
            val = env.get(var)
            if val is None or val == "":
                if default is None:
                    missing.append(var)
                    return ""
                return default
            return val

        out = _ENV.sub(sub, obj)
        if missing:
            return Missing(missing[0])
        return out
    return obj
