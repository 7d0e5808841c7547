"""``tokenbench run --add-reducer SPEC``: a ``[[reducers]]`` entry given on the command line, added to any
suite (a plugin compared with the built-ins without copying a suite file) and validated with the suite's
own entries, before any work.

SPEC is ``NAME`` or ``NAME:ITEMS``, ITEMS being KEY=VALUE items separated by spaces (quote the whole SPEC):

* ``KEY=VALUE``: a parameter (VALUE read as TOML, else as a string: ``keep=0.5``, ``stages=["rlt","tome"]``);
* ``sweep.KEY=V1,V2,…`` (or ``sweep.KEY=[V1, V2]``): a sweep over a parameter; ``KEY`` may be a dotted path
  into a nested one (``sweep.stages.tome.params.r=2,4``);
* ``label=…``, ``id=…``, ``modes=…``, ``datasets=…``, ``models=…``, ``attn_path=…``: the entry's own keys, as
  in a suite file (``params.KEY=VALUE`` sets a parameter named like one of them).
"""
from __future__ import annotations

from typing import Any

from ..errors import SuiteError
from .overrides import parse_value
from .spec import REDUCER_KEYS

ENTRY_KEYS = tuple(k for k in REDUCER_KEYS if k not in ("name", "params", "sweep"))


def _sweep_values(text: str) -> list[Any]:
    value = parse_value(text)
    if isinstance(value, list):
        return value
    return [parse_value(v.strip()) for v in text.split(",")]


def _items(text: str) -> list[str]:
    """Split on spaces outside quotes and brackets, keeping the quotes: each VALUE is read as TOML."""
    items, cur, depth, quote = [], "", 0, ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch.isspace() and depth == 0:
            items, cur = items + [cur] if cur else items, ""
            continue
        cur += ch
    if quote or depth:
        raise ValueError("unbalanced quotes or brackets")
    return items + [cur] if cur else items


def reducer_entry(spec: str) -> dict[str, Any]:
    """The ``[[reducers]]`` table ``spec`` describes (see the module docstring)."""
    name, _, items = spec.partition(":")
    name = name.strip()
    if not name or any(c.isspace() for c in name):
        raise SuiteError(f"--add-reducer {spec!r}: expected NAME or 'NAME:KEY=VALUE …', e.g. "
                         "'my_reducer:sweep.keep=0.9,0.75,0.5'")
    entry: dict[str, Any] = {"name": name}
    try:
        words = _items(items)
    except ValueError as exc:
        raise SuiteError(f"--add-reducer {spec!r}: {exc}") from None
    for item in words:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SuiteError(f"--add-reducer {spec!r}: {item!r} is not KEY=VALUE")
        if key.startswith("sweep."):
            entry.setdefault("sweep", {})[key[len("sweep."):]] = _sweep_values(value)
        elif key.startswith("params."):
            entry.setdefault("params", {})[key[len("params."):]] = parse_value(value)
        elif key in ENTRY_KEYS:
            entry[key] = parse_value(value)
        else:
            entry.setdefault("params", {})[key] = parse_value(value)
    return entry
