"""Argument parsing shared by the subcommands."""
from __future__ import annotations

import ast

from tokenbench.reducers import Reducer, ReducerParamError, UnknownReducerError, get_reducer

from ..errors import UserError


def parse_params(items: list[str]) -> dict:
    """``["threshold=0.1", "r=[8, 4]"]`` -> ``{"threshold": 0.1, "r": [8, 4]}`` (values as Python literals,
    falling back to plain strings)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"reducer parameter {item!r} is not of the form NAME=VALUE")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = ast.literal_eval(v.strip())
        except (ValueError, SyntaxError):
            out[k.strip()] = v.strip()
    return out


def reducer_from(spec: list[str] | None) -> Reducer | None:
    """``["rlt", "threshold=0.1"]`` -> that reducer; ``None``, ``[]`` or ``["none"]`` -> None."""
    if not spec or spec[0] == "none" and len(spec) == 1:
        return None
    try:
        return get_reducer(spec[0], **parse_params(spec[1:]))
    except (ReducerParamError, UnknownReducerError, TypeError) as exc:
        raise UserError(str(exc)) from exc
