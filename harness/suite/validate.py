"""Validation of a suite's tables and entries: defaults, training recipe, models, datasets, reducers. Each
step is a function handed the :class:`~.checker.Checker` of the suite being read."""
from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from tokenbench.datasets import available_datasets, broken_datasets, dataset_format
from tokenbench.reducers import ReducerParamError, UnknownReducerError, get_reducer, reducer_class

from ..attention import kernel_named
from ..checkpoint import checkpoint_problem
from ..model import MODEL_SIZES
from ..settings import (
    DEFAULT_KEYS,
    PretrainSettings,
    SuiteDefaults,
    TrainSettings,
    resolve_device,
    table_fields,
)
from ..train import TrainRecipe
from .checker import Checker, Missing, close_hint
from .spec import (
    ATTN_BACKENDS,
    ATTN_PATHS,
    AUTOCAST,
    CHECKPOINT_NONE,
    DATASET_KEYS,
    DTYPES,
    MODEL_KEYS,
    MODES,
    REDUCER_KEYS,
    DatasetSpec,
    ModelSpec,
    ReducerSpec,
    parse_views,
    set_param,
)


def backend_problem(backend: str, device: str) -> str | None:
    """Why the varlen kernel ``backend`` asked for by name cannot run on ``device``, this machine's kind of
    device, when that is because it is missing here (no compiler for ``cpu_varlen``, no ``flash_attn``
    package); None otherwise (a dtype it does not take is the cell's to refuse)."""
    kernel = kernel_named(backend)
    if kernel is None or kernel.device_type != torch.device(device).type or kernel.installed():
        return None
    return kernel.missing()


def device_problem(device: str) -> str | None:
    """Why ``device`` (cpu, cuda, cuda:N, mps) cannot run on this machine, or None."""
    if device.startswith("cuda"):
        if not re.fullmatch(r"cuda(:\d+)?", device):
            return "that is not a device name (cpu, cuda, cuda:N, mps)"
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            build = f"torch {torch.__version__} is built without CUDA" if torch.version.cuda is None else (
                f"torch {torch.__version__} sees no CUDA device")
            return f"this machine has no CUDA device ({build})"
        index = int(device.partition(":")[2] or 0)
        if index >= n:
            return f"this machine has {n} CUDA device{'s' if n > 1 else ''} (cuda:0…cuda:{n - 1})"
    if device == "mps" and not torch.backends.mps.is_available():
        return "this machine has no MPS device"
    return None


def defaults(ck: Checker, check_device: bool) -> SuiteDefaults:
    """``[defaults]``, as asked (``device`` and ``dtype`` may stay ``auto``). ``check_device``: refuse a
    device or kernel this machine lacks (off where the cells run on other machines)."""
    raw = ck.raw.get("defaults", {})
    p = ("defaults",)
    ck.check_keys(raw, DEFAULT_KEYS, p, "[defaults]")
    d = dataclasses.replace(SuiteDefaults(), **raw)
    modes = ck.modes(p + ("modes",), list(d.modes) if isinstance(d.modes, tuple) else d.modes)
    bs = d.batch_sizes
    if isinstance(bs, int) and not isinstance(bs, bool):
        bs = [bs]
    if not isinstance(bs, (list, tuple)) or not bs:
        raise ck.fail(p + ("batch_sizes",), f"batch_sizes must be a list of positive integers, got {bs!r}")
    ints = {k: ck.int_(p + (k,), getattr(d, k), lo) for k, lo in (
        ("repeats", 1), ("warmup", 0), ("threads", 0), ("max_clips", 0), ("seed", 0),
        ("flops_check_clips", 0), ("time_clips", 0))}
    d = dataclasses.replace(d, modes=modes,
                            batch_sizes=tuple(ck.int_(p + ("batch_sizes",), b, 1) for b in bs), **ints)
    ck.str_(p + ("dtype",), d.dtype, DTYPES)
    ck.str_(p + ("attn_backend",), d.attn_backend, ATTN_BACKENDS)
    ck.str_(p + ("device",), d.device)
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", d.device):
        raise ck.fail(p + ("device",), f"device must be auto, cpu, cuda or cuda:N; got {d.device!r}")
    problem = device_problem(d.device) if check_device else None
    if problem:  # refused here, so --dry-run refuses it too, not the first cell's model.to()
        raise ck.fail(p + ("device",), f"device = {d.device!r}, but {problem}; use device = \"auto\" or "
                                       "\"cpu\"")
    if not isinstance(d.compile, bool):
        raise ck.fail(p + ("compile",), f"compile must be true or false, got {d.compile!r}")
    if d.compile and "inference" in d.modes and d.warmup < 1:
        raise ck.fail(p + ("warmup",), "compile = true needs warmup ≥ 1: otherwise torch.compile's "
                                       "compilation lands in the timed runs")
    problem = backend_problem(d.attn_backend, resolve_device(d.device)) if check_device else None
    if problem:  # refused here, so --dry-run refuses it too, not every cell one by one
        raise ck.fail(p + ("attn_backend",), f"attn_backend = {d.attn_backend!r}, but {problem}; use "
                                             "attn_backend = \"auto\" or \"sdpa\"")
    ac = list(d.autocast) if isinstance(d.autocast, (list, tuple)) else [d.autocast]
    if not ac:
        raise ck.fail(p + ("autocast",), f"autocast must be one of {', '.join(AUTOCAST)} or a list of them")
    d = dataclasses.replace(d, autocast=tuple(ck.str_(p + ("autocast",), a, AUTOCAST) for a in ac))
    if d.amp and d.dtype not in ("auto", "float32"):
        raise ck.fail(p + ("dtype",), f"autocast runs float32 weights in lower precision: with autocast = "
                                      f"{list(d.autocast)} set dtype = \"float32\" (or \"auto\"), not "
                                      f"{d.dtype!r}")
    return d


def _kinds(hint: Any) -> set:
    """The plain types a field's annotation allows (``int | None``: int, NoneType; ``dict[str, Any]``: dict)."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return {typing.get_origin(a) or a for a in args}


def check_value(ck: Checker, path: tuple, v: Any, hint: Any, meta: Mapping[str, Any], what: str) -> None:
    """One key of a settings table, by its field's type: ``metadata`` gives an integer's ``minimum`` (1 when
    not said) and a string's ``choices``."""
    k, kinds = path[-1], _kinds(hint)
    if {bool, str} <= kinds:  # a switch with a word for "decide for me" (amp: true, false or "auto")
        if not isinstance(v, bool) and v not in meta["choices"]:
            words = " or ".join(f'"{c}"' for c in meta["choices"])
            raise ck.fail(path, f"{k} must be true, false or {words}, got {v!r}")
    elif bool in kinds:
        if not isinstance(v, bool):
            raise ck.fail(path, f"{k} must be true or false, got {v!r}")
    elif int in kinds:
        ck.int_(path, v, meta.get("minimum", 1))
    elif float in kinds:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ck.fail(path, f"{k} must be a number ≥ 0, got {v!r}")
    elif str in kinds:
        ck.str_(path, v, meta.get("choices"))
    elif dict in kinds and not isinstance(v, dict):
        raise ck.fail(path, f"{what}.{k} must be a table")


def settings(ck: Checker, cls: type, table: dict, path: tuple, what: str) -> Any:
    """A settings table (:class:`TrainSettings`, :class:`PretrainSettings`) checked against its fields and
    its recipe's (harness.train.TrainRecipe), each by its type."""
    fields = table_fields(cls, cls.SKIP)
    ck.check_keys(table, [f.name for f in fields], path, what)
    hints = {**typing.get_type_hints(TrainRecipe), **typing.get_type_hints(cls)}
    for f in fields:
        if f.name in table:
            check_value(ck, path + (f.name,), table[f.name], hints[f.name], f.metadata, what)
    return cls.from_table(table)


def train_settings(ck: Checker) -> TrainSettings:
    return settings(ck, TrainSettings, ck.raw.get("train", {}), ("train",), "[train]")


def named_entry(ck: Checker, table: str, i: int, e: dict, keys, choices: str) -> tuple[tuple, str]:
    """The path of entry ``i`` of ``[[table]]`` and its name, its keys checked; ``choices`` says where names
    come from, in the missing-name error."""
    p = (table, i)
    ck.check_keys(e, keys, p, ck.entry_name(table, i))
    if "name" not in e:
        raise ck.fail(p, f"{ck.entry_name(table, i)} needs a name ({choices})")
    return p, ck.str_(p + ("name",), e["name"])


def known_name(ck: Checker, path: tuple, name: str, names: list[str], what: str) -> str:
    """``name`` when it is one of ``names``; else the error names the closest one and the choices."""
    if name not in names:
        raise ck.fail(path, f"unknown {what} {name!r}{close_hint(name, names)}; choose from {', '.join(names)}")
    return name


def model(ck: Checker, i: int, e: dict) -> ModelSpec:
    p, name = named_entry(ck, "models", i, e, MODEL_KEYS, ", ".join(MODEL_SIZES))
    known_name(ck, p + ("name",), name, list(MODEL_SIZES), "model")
    m = ModelSpec(id=ck.str_(p + ("id",), e.get("id", name)), name=name, path=p)
    m.num_frames = ck.int_(p + ("num_frames",), e.get("num_frames", ModelSpec.num_frames), 2)
    m.img_size = ck.int_(p + ("img_size",), e.get("img_size", ModelSpec.img_size), 16)
    if m.num_frames % 2:
        raise ck.fail(p + ("num_frames",), f"num_frames must be a multiple of the tubelet (2), got {m.num_frames}")
    if m.img_size % 16:
        raise ck.fail(p + ("img_size",), f"img_size must be a multiple of the patch (16), got {m.img_size}")
    m.num_classes = ck.int_(p + ("num_classes",), e.get("num_classes", ModelSpec.num_classes), 0)
    m.modes = ck.modes(p + ("modes",), e.get("modes", list(MODES)))
    ckpt = e.get("checkpoint", "")
    pre = e.get("pretrain")
    if pre is not None:
        if not isinstance(pre, dict):
            raise ck.fail(p + ("pretrain",), "pretrain must be a table, e.g. { dataset = \"synthetic\", epochs = 8 }")
        pre = settings(ck, PretrainSettings, pre, p + ("pretrain",), "pretrain")
        if pre.dataset in available_datasets() and not dataset_format(pre.dataset).labelled:
            raise ck.fail(p + ("pretrain", "dataset"), f"cannot train on the unlabelled dataset {pre.dataset!r}")
    reported = False
    if isinstance(ckpt, Missing) and pre is None:
        reported = True
        ck.missing.append(p, f"{ck.where(p + ('checkpoint',))}: {ck.entry_name('models', i)} checkpoint — set "
                             f"{ckpt.var}=/path/to/checkpoint.pth or pass --set models.{m.id}.checkpoint=PATH")
        ckpt = ""
    elif isinstance(ckpt, Missing):
        ckpt = ""
    ckpt = ck.str_(p + ("checkpoint",), ckpt)
    if ckpt in ("", None):
        if pre is None and not reported:
            raise ck.fail(p, f"{ck.entry_name('models', i)} has no weights: give checkpoint = \"PATH\" (a "
                             f"checkpoint file or transformers model directory), checkpoint = "
                             f"\"{CHECKPOINT_NONE}\" (random weights), "
                             "or pretrain = { dataset = \"synthetic\", epochs = 8 }")
        m.pretrain = pre
        m.checkpoint = ""
    elif ckpt == CHECKPOINT_NONE:
        m.checkpoint = CHECKPOINT_NONE
    else:
        path = Path(ckpt).expanduser()
        if ck.check_paths and not path.exists():
            ck.missing.append(p, f"{ck.where(p + ('checkpoint',))}: {ck.entry_name('models', i)} checkpoint "
                                 f"{str(path)!r} does not exist")
        elif ck.check_paths:  # a config.json that does not fit is refused before any work
            problem = checkpoint_problem(path, name, m.num_frames, m.img_size, m.num_classes)
            if problem:
                raise ck.fail(p + ("checkpoint",), f"{ck.entry_name('models', i)}: {problem}")
        m.checkpoint = str(path.resolve()) if path.exists() else str(path)
    return m


def dataset(ck: Checker, i: int, e: dict) -> DatasetSpec:
    p, name = named_entry(ck, "datasets", i, e, DATASET_KEYS, ", ".join(dataset_names()))
    if name in broken_datasets():  # installed but failing to import: say why, not "unknown"
        why = broken_datasets()[name]
        raise ck.fail(p + ("name",), f"dataset {name!r} is installed but failed to load: {why}")
    known_name(ck, p + ("name",), name, dataset_names(), "dataset")
    d = DatasetSpec(id=ck.str_(p + ("id",), e.get("id", name)), name=name, path=p)
    d.split = ck.str_(p + ("split",), e.get("split", DatasetSpec.split))
    d.train_split = ck.str_(p + ("train_split",), e.get("train_split", DatasetSpec.train_split))
    views = e.get("views", DatasetSpec.views)
    try:  # a number (views = 3) gets the expected form too, not "must be a string"
        c, k = parse_views(ck.str_(p + ("views",), views) if isinstance(views, Missing) else views)
    except ValueError as exc:
        raise ck.fail(p + ("views",), str(exc)) from None
    d.views = f"{c}x{k}"
    if "max_clips" in e:
        d.max_clips = ck.int_(p + ("max_clips",), e["max_clips"], 0)
    d.modes = ck.modes(p + ("modes",), e.get("modes", list(MODES)))
    d.skip_unreadable = e.get("skip_unreadable", DatasetSpec.skip_unreadable)
    if not isinstance(d.skip_unreadable, bool):
        raise ck.fail(p + ("skip_unreadable",), f"skip_unreadable must be true or false, got {d.skip_unreadable!r}")
    if not d.labelled and "train" in d.modes and "modes" in e:
        raise ck.fail(p + ("modes",), f"dataset {name!r} is unlabelled: it cannot be trained on; "
                                        "use modes = [\"inference\"]")
    if not d.labelled:
        d.modes = tuple(m for m in d.modes if m != "train")
    d.options = dataset_options(ck, i, e, d)
    return d


def dataset_options(ck: Checker, i: int, e: dict, d: DatasetSpec) -> dict:
    """The entry's ``options`` with its ``manifest`` / ``root`` paths checked; paths the format needs and
    the suite does not give are collected, to be refused at once for the cells that use them."""
    p = ("datasets", i)
    opts = e.get("options", {})
    if not isinstance(opts, dict):
        raise ck.fail(p + ("options",), f"options must be a table, got {opts!r}")
    opts = dict(opts)
    for k, v in opts.items():
        if isinstance(v, Missing):
            raise ck.fail(p + ("options", k), f"options.{k} reads ${{{v.var}}}, which is not set")
    for k in ("manifest", "root"):
        if k not in e:
            continue
        v = e[k]
        if isinstance(v, Missing):
            if k == "manifest":
                ck.missing.append(
                    p, f"{ck.where(p + (k,))}: {ck.entry_name('datasets', i)} manifest — set {v.var}=/path/to/"
                    f"list.csv or pass --set datasets.{d.id}.manifest=PATH")
            continue
        v = ck.str_(p + (k,), v)
        if not v:
            continue
        path = Path(v).expanduser()
        ok = path.is_file() if k == "manifest" else path.is_dir()
        if ck.check_paths and not ok:
            ck.missing.append(p, f"{ck.where(p + (k,))}: {ck.entry_name('datasets', i)} {k} {str(path)!r} "
                                 f"{'is not a file' if k == 'manifest' else 'is not a folder'}")
        opts[k] = str(path.resolve()) if path.exists() else str(path)
    for need in dataset_format(d.name).needs:
        if need not in opts and not ck.missing.has(p):
            ck.missing.append(p, f"{ck.where(p)}: {ck.entry_name('datasets', i)} needs {need} = \"PATH\" "
                                 f"(or --set datasets.{d.id}.{need}=PATH)")
    return opts


def dataset_names() -> list[str]:
    return sorted(available_datasets())


def reducer(ck: Checker, i: int, e: dict) -> ReducerSpec:
    p, name = named_entry(ck, "reducers", i, e, REDUCER_KEYS, "see tokenbench list")
    try:
        reducer_class(name)
    except UnknownReducerError as exc:
        raise ck.fail(p + ("name",), str(exc)) from None
    r = ReducerSpec(id=ck.str_(p + ("id",), e.get("id", name)), name=name, path=p)
    params, sweep = e.get("params", {}), e.get("sweep", {})
    for k, v in (("params", params), ("sweep", sweep)):
        if not isinstance(v, dict):
            raise ck.fail(p + (k,), f"{k} must be a table, e.g. {k} = {{ threshold = 0.1 }}")
    for k, vals in sweep.items():
        if not isinstance(vals, list) or not vals:
            raise ck.fail(p + ("sweep", k), f"sweep.{k} must be a non-empty list of values, got {vals!r}")
        if k in params:
            raise ck.fail(p + ("sweep", k), f"{k} is both in params and in sweep")
    r.params, r.sweep = dict(params), {k: list(v) for k, v in sweep.items()}
    for k in r.sweep:
        if "." in k:  # a path into a nested parameter (a composition's stage): it must lead somewhere
            try:
                set_param(copy.deepcopy(r.params), k, r.sweep[k][0])
            except ValueError as exc:
                raise ck.fail(p + ("sweep", k), str(exc)) from None
    if "label" in e:
        r.label = ck.str_(p + ("label",), e["label"])
    r.modes = ck.modes(p + ("modes",), e.get("modes", list(MODES)))
    if "datasets" in e:
        r.datasets = ck.ids(p + ("datasets",), e["datasets"])
    if "models" in e:
        r.models = ck.ids(p + ("models",), e["models"])
    if "attn_path" in e:
        r.attn_path = ck.str_(p + ("attn_path",), e["attn_path"], ATTN_PATHS)
    for variant in r.variants():
        build_reducer(ck, r, variant)
    return r


def param_path(r: ReducerSpec, msg: str) -> tuple:
    """The params/sweep key a reducer's error message names, for its line."""
    for k in list(r.sweep) + list(r.params):
        if re.search(rf"\b{re.escape(k)}\b", msg):
            return r.path + (("sweep" if k in r.sweep else "params"), k)
    return r.path + ("params",) if r.params else r.path


def build_reducer(ck: Checker, r: ReducerSpec, params: dict[str, Any]):
    try:
        return get_reducer(r.name, **params)
    except ReducerParamError as exc:
        raise ck.fail(param_path(r, str(exc)), f"reducer {r.name!r}: {exc}") from None
    except Exception as exc:  # a plugin's constructor failing in its own way
        raise ck.fail(param_path(r, str(exc)),
                        f"reducer {r.name!r} {params}: {type(exc).__name__}: {exc}") from None


def check_references(ck: Checker, models, datasets, reducers) -> None:
    mids, dids = {m.id for m in models}, {d.id for d in datasets}
    for r in reducers:
        for attr, ids, kind in (("datasets", dids, "datasets"), ("models", mids, "models")):
            for x in getattr(r, attr) or ():
                if x not in ids:
                    raise ck.fail(r.path + (attr,), f"{kind} {x!r} is not an id of any [[{kind}]] entry "
                                                      f"({', '.join(sorted(ids))})")
