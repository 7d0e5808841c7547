"""Suite files: what ``tokenbench run`` measures, as TOML (docs/architecture.md §6).

A suite is the cross product **models × datasets × reducers (with parameter sweeps) × batch sizes ×
modes**, plus the settings every cell shares. Everything is validated before any work is done: an
unknown key (a typo), an unknown reducer or dataset, a parameter a reducer refuses, or a parameter that
cannot work on a model's token grid is refused with the file and LINE of the offending entry.

The format — every key, the ``${VAR}`` strings, ``--set`` overrides — is documented in ``docs/suites.md``
("The suite file"); the built-in suites are ``harness/suites/*.toml``.

:func:`load_suite` parses, validates (the functions of :mod:`.validate`, each handed the suite's
:class:`~.checker.Checker`) and expands (:func:`~.cells.expand`); :meth:`Suite.cells` lists the
:class:`~tokenbench.harness.schema.Cell` objects, each with its ``key``.
"""
from __future__ import annotations

import os
import re
import tomllib

from ..errors import SuiteError
from ..settings import PretrainSettings, SuiteDefaults, TrainSettings
from . import validate
from .cells import describe, expand, select_cells
from .checker import Checker
from .overrides import apply_overrides, interpolate
from .source import SourceMap, builtin_suites, suite_source
from .spec import (
    ATTN_BACKENDS,
    CHECKPOINT_NONE,
    MODES,
    SUITE_KEYS,
    TOP_KEYS,
    DatasetSpec,
    ModelSpec,
    ReducerSpec,
    Suite,
    parse_views,
)


def load_suite(name_or_path: str | os.PathLike = "default", overrides: list[str] | tuple[str, ...] = (),
               env: dict[str, str] | None = None, check_paths: bool = True,
               only: list[str] | tuple[str, ...] = (), check_device: bool = True,
               add_reducers: list[str] | tuple[str, ...] = (), auto_device: str | None = None) -> Suite:
    """Read, override (``--set``), validate and expand a suite; keep the cells ``only`` selects
    (``FIELD=VALUE`` items, see :func:`select_cells`). ``check_device``: refuse a ``defaults.device`` this
    machine lacks (off when the cells run elsewhere, as Slurm jobs do); ``auto_device``: what
    ``device = "auto"`` stands for where the cells run (Slurm's GPU nodes: cuda; None: this machine). Raises
    :class:`SuiteError` (a :class:`~tokenbench.harness.errors.UserError`) naming the file and line of the first
    problem, or every path the selected cells need and lack, at once. ``add_reducers``: ``--add-reducer`` SPECs,
    entries added after the file's (:mod:`~tokenbench.harness.suite.added`)."""
    text, display, stem = suite_source(name_or_path)
    return parse_suite(text, display, stem, overrides=overrides, env=env, check_paths=check_paths, only=only,
                       check_device=check_device, add_reducers=add_reducers, auto_device=auto_device)


def parse_suite(text: str, file: str = "<suite>", default_name: str = "suite",
                overrides: list[str] | tuple[str, ...] = (), env: dict[str, str] | None = None,
                check_paths: bool = True, only: list[str] | tuple[str, ...] = (), check_device: bool = True,
                add_reducers: list[str] | tuple[str, ...] = (), auto_device: str | None = None) -> Suite:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        where = f"{file}:{m.group(1)}" if m else file
        raise SuiteError(f"{where}: not valid TOML: {exc}") from None
    from_set = apply_overrides(raw, list(overrides), list(add_reducers))
    ck = Checker(interpolate(raw, os.environ if env is None else env), SourceMap(text), file, check_paths,
                 from_set)
    suite = read_suite(ck, default_name, list(overrides), check_device, auto_device)
    cells = expand(suite, ck)
    if not cells:
        raise SuiteError(f"{file}: the suite expands to no cell (check modes/datasets/models restrictions)")
    keep = select_cells(cells, only)
    if not keep:
        raise SuiteError(f"--only {' '.join(only)} selects none of the {len(cells)} cells of {file}")
    suite.selected = [cells[i] for i in keep]
    suite.total_cells = len(cells)
    # every path the selected cells need and lack, at once
    used = {m.path for m in suite.models if m.id in {c.model_id or c.model for c in suite.selected}} | {
        d.path for d in suite.datasets if d.id in {c.dataset_id or c.dataset for c in suite.selected}}
    missing = ck.missing.for_entries(used)
    if missing:
        raise SuiteError(f"{file} cannot run: required paths are not given\n  " + "\n  ".join(missing))
    return suite


def read_suite(ck: Checker, default_name: str, overrides: list[str], check_device: bool,
               auto_device: str | None) -> Suite:
    """The suite's tables and entries, each validated; ids unique, references resolved."""
    raw = ck.raw
    ck.check_keys(raw, TOP_KEYS, (), "the suite")
    for sec in ("suite", "defaults", "train"):
        if sec in raw and not isinstance(raw[sec], dict):
            raise ck.fail((sec,), f"[{sec}] must be a table")
    for sec in ("models", "datasets", "reducers"):
        v = raw.get(sec)
        if v is not None and not (isinstance(v, list) and all(isinstance(e, dict) for e in v)):
            raise ck.fail((sec,), f"{sec} must be [[{sec}]] tables")
        if not v:
            raise SuiteError(f"{ck.file}: the suite has no [[{sec}]] entry")
    meta = raw.get("suite", {})
    ck.check_keys(meta, SUITE_KEYS, ("suite",), "[suite]")
    defaults = validate.defaults(ck, check_device)
    train = validate.train_settings(ck)
    models = [validate.model(ck, i, e) for i, e in enumerate(raw["models"])]
    datasets = [validate.dataset(ck, i, e) for i, e in enumerate(raw["datasets"])]
    reducers = [validate.reducer(ck, i, e) for i, e in enumerate(raw["reducers"])]
    for kind, items in (("models", models), ("datasets", datasets), ("reducers", reducers)):
        seen: dict[str, int] = {}
        for i, it in enumerate(items):
            # reducer entries may share their name as id (two `tome` entries for two models): only an
            # id given twice is refused; repeated measurements are refused in expand()
            given = kind != "reducers" or any("id" in raw[kind][j] for j in (i, seen.get(it.id, i)))
            if it.id in seen and given:
                raise ck.fail((kind, i), f"two [[{kind}]] entries have id {it.id!r} (the other at "
                                         f"{ck.where((kind, seen[it.id]))}); give each its own id")
            seen[it.id] = i
    validate.check_references(ck, models, datasets, reducers)
    name = meta.get("name", default_name)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+\-]*", name):
        raise ck.fail(("suite", "name"), f"suite name must be a plain word (letters, digits, . _ + -), "
                                         f"got {name!r}")
    return Suite(name=name, description=str(meta.get("description", "")), file=ck.file, defaults=defaults,
                 train=train, models=models, datasets=datasets, reducers=reducers, overrides=overrides,
                 auto_device=auto_device)


__all__ = ["Suite", "SuiteError", "ModelSpec", "DatasetSpec", "ReducerSpec", "SuiteDefaults", "TrainSettings",
           "PretrainSettings", "SourceMap", "load_suite", "parse_suite", "read_suite", "expand",
           "builtin_suites", "suite_source", "parse_views", "describe", "select_cells", "ATTN_BACKENDS",
           "CHECKPOINT_NONE", "MODES"]
