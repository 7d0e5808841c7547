"""Argument parsing shared by the subcommands."""
from __future__ import annotations

import ast
import tempfile
from pathlib import Path

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


def reducer_from(spec: list[str] | None) -> Reducer:
    """``["rlt", "threshold=0.1"]`` -> that reducer; ``None`` or ``[]`` -> the baseline ``none``."""
    spec = spec or ["none"]
    try:
        return get_reducer(spec[0], **parse_params(spec[1:]))
    except (ReducerParamError, UnknownReducerError, TypeError) as exc:
        raise UserError(str(exc)) from exc


def require_at_least(args, minimums: dict[str, int]) -> None:
    """Refuse a numeric option below its minimum, naming the flag (``None``: not given, left to its default)."""
    for name, lo in minimums.items():
        v = getattr(args, name)
        if v is not None and v < lo:
            raise UserError(f"--{name.replace('_', '-')} must be ≥ {lo}, got {v}")


def require_file(flag: str, path: str) -> None:
    """A path that must name a file: a directory or a missing path is refused as what it is."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise UserError(f"{flag} {path} is a directory, not a file")
    if not p.exists():
        raise UserError(f"{flag} {path} does not exist")


def require_folder(flag: str, path: str | Path) -> None:
    """A folder the command will write into (made if missing): refused when it, or a folder above it, is
    a file, or when it cannot be made or written into (``/proc/x``, ``/sys/x``, a read-only disk) — before
    any work, not when the first write fails after hours of cells. Tried, not guessed: the folders it had to
    make are removed again, and a probe file is written into an existing one and removed."""
    given = Path(path).expanduser()
    missing = []
    for p in (given, *given.parents):
        if p.exists():
            if not p.is_dir():
                what = "is a file" if p == given else f"is inside {p}, which is a file"
                raise UserError(f"{flag} {path} {what}; give a folder")
            break
        missing.append(p)
    try:
        if missing:
            given.mkdir(parents=True)
            for p in missing:  # deepest first: a dry run leaves nothing behind
                p.rmdir()
        else:
            with tempfile.TemporaryFile(dir=given, prefix=".tokenbench-probe-"):
                pass
    except OSError as exc:
        verb = "cannot be made" if missing else "cannot be written into"
        raise UserError(f"{flag} {path} {verb} ({exc.strerror or exc}); give a folder you can write to") from None


def require_output_file(flag: str, path: str | Path | None) -> None:
    """A file the command will write at its end: refused now when it is a directory or sits inside a file,
    not after the training it would hold."""
    if path is None:
        return
    given = Path(path).expanduser()
    if given.is_dir():
        raise UserError(f"{flag} {path} is a directory; give a file name")
    for p in given.parents:
        if p.exists():
            if not p.is_dir():
                raise UserError(f"{flag} {path} is inside {p}, which is a file")
            return
