"""Suite files: what ``tokenbench run`` measures, as TOML (docs/architecture.md §6).

A suite is the cross product **models × datasets × reducers (with parameter sweeps) × batch sizes ×
modes**, plus the settings every cell shares. Everything is validated before any work is done: an
unknown key (a typo), an unknown reducer or dataset, a parameter a reducer refuses, or a parameter that
cannot work on a model's token grid is refused with the file and LINE of the offending entry.

The format — every key, the ``${VAR}`` strings, ``--set`` overrides — is documented in ``docs/suites.md``
("The suite file"); the built-in suites are ``harness/suites/*.toml``.

:func:`load_suite` parses and validates; :meth:`Suite.cells` expands to :class:`~tokenbench.harness.schema.Cell`
objects, each with its ``key``.
"""
from __future__ import annotations

import os
import re
import tomllib

from ..errors import SuiteError
from .cells import _Validator, describe, select_cells
from .source import SourceMap, builtin_suites, suite_source
from .spec import (
    ATTN_BACKENDS,
    CHECKPOINT_NONE,
    DEFAULTS,
    MODES,
    DatasetSpec,
    ModelSpec,
    ReducerSpec,
    Suite,
    parse_views,
)


def load_suite(name_or_path: str | os.PathLike = "default", overrides: list[str] | tuple[str, ...] = (),
               env: dict[str, str] | None = None, check_paths: bool = True,
               only: list[str] | tuple[str, ...] = (), check_device: bool = True,
               add_reducers: list[str] | tuple[str, ...] = ()) -> Suite:
    """Read, override (``--set``), validate and expand a suite; keep the cells ``only`` selects
    (``FIELD=VALUE`` items, see :func:`select_cells`). ``check_device``: refuse a ``defaults.device`` this
    machine lacks (off when the cells run elsewhere, as Slurm jobs do). Raises :class:`SuiteError` (a
    :class:`~tokenbench.harness.errors.UserError`) naming the file and line of the first problem, or every
    path the selected cells need and lack, at once. ``add_reducers``: ``--add-reducer`` SPECs, entries added
    after the file's (:mod:`~tokenbench.harness.suite.added`)."""
    text, display, stem = suite_source(name_or_path)
    return parse_suite(text, display, stem, overrides=overrides, env=env, check_paths=check_paths, only=only,
                       check_device=check_device, add_reducers=add_reducers)


def parse_suite(text: str, file: str = "<suite>", default_name: str = "suite",
                overrides: list[str] | tuple[str, ...] = (), env: dict[str, str] | None = None,
                check_paths: bool = True, only: list[str] | tuple[str, ...] = (), check_device: bool = True,
                add_reducers: list[str] | tuple[str, ...] = ()) -> Suite:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        where = f"{file}:{m.group(1)}" if m else file
        raise SuiteError(f"{where}: not valid TOML: {exc}") from None
    return _Validator(raw, SourceMap(text), file, default_name, list(overrides),
                      os.environ if env is None else env, check_paths, only, check_device, add_reducers).run()

__all__ = ["Suite", "SuiteError", "ModelSpec", "DatasetSpec", "ReducerSpec", "SourceMap", "load_suite",
           "parse_suite", "builtin_suites", "suite_source", "parse_views", "describe", "select_cells",
           "ATTN_BACKENDS", "CHECKPOINT_NONE", "DEFAULTS", "MODES"]
