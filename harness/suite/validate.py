"""Validation of a suite's tables and entries: defaults, training recipe, models, datasets, reducers."""
from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Any

import torch

from tokenbench.datasets import available_datasets, broken_datasets, dataset_format
from tokenbench.reducers import ReducerParamError, UnknownReducerError, get_reducer, reducer_class

from ..attention import kernel_named
from ..checkpoint import checkpoint_problem
from ..model import MODEL_SIZES
from ..train import DEFAULTS as TRAIN_DEFAULTS
from ..train import RECIPE_FIELDS, TrainRecipe
from .overrides import _Checks, _Missing
from .spec import (
    ATTN_BACKENDS,
    ATTN_PATHS,
    AUTOCAST,
    CHECKPOINT_NONE,
    DATASET_KEYS,
    DEFAULTS,
    DTYPES,
    MODEL_KEYS,
    MODES,
    PRETRAIN_EXTRAS,
    REDUCER_KEYS,
    TRAIN_EXTRAS,
    DatasetSpec,
    ModelSpec,
    ReducerSpec,
    _resolve_device,
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


class _Entries(_Checks):
    def defaults(self) -> dict[str, Any]:
        raw = self.raw.get("defaults", {})
        self.check_keys(raw, DEFAULTS, ("defaults",), "[defaults]")
        d = {**DEFAULTS, **raw}
        p = ("defaults",)
        d["modes"] = self._modes(p + ("modes",), d["modes"])
        bs = d["batch_sizes"]
        if isinstance(bs, int) and not isinstance(bs, bool):
            bs = [bs]
        if not isinstance(bs, list) or not bs:
            raise self.fail(p + ("batch_sizes",), f"batch_sizes must be a list of positive integers, got {bs!r}")
        d["batch_sizes"] = [self._int(p + ("batch_sizes",), b, 1) for b in bs]
        for k, lo in (("repeats", 1), ("warmup", 0), ("threads", 0), ("max_clips", 0), ("seed", 0),
                      ("flops_check_clips", 0), ("time_clips", 0)):
            d[k] = self._int(p + (k,), d[k], lo)
        self._str(p + ("dtype",), d["dtype"], DTYPES)
        self._str(p + ("attn_backend",), d["attn_backend"], ATTN_BACKENDS)
        self._str(p + ("device",), d["device"])
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", d["device"]):
            raise self.fail(p + ("device",), f"device must be auto, cpu, cuda or cuda:N; got {d['device']!r}")
        problem = device_problem(d["device"]) if self.check_device else None
        if problem:  # refused here, so --dry-run refuses it too, not the first cell's model.to()
            raise self.fail(p + ("device",), f"device = {d['device']!r}, but {problem}; use device = \"auto\" or "
                                             "\"cpu\"")
        if not isinstance(d["compile"], bool):
            raise self.fail(p + ("compile",), f"compile must be true or false, got {d['compile']!r}")
        if d["compile"] and "inference" in d["modes"] and d["warmup"] < 1:
            raise self.fail(p + ("warmup",), "compile = true needs warmup ≥ 1: otherwise torch.compile's "
                                             "compilation lands in the timed runs")
        d["device"] = _resolve_device(d["device"])
        problem = backend_problem(d["attn_backend"], d["device"]) if self.check_device else None
        if problem:  # refused here, so --dry-run refuses it too, not every cell one by one
            raise self.fail(p + ("attn_backend",), f"attn_backend = {d['attn_backend']!r}, but {problem}; use "
                                                   "attn_backend = \"auto\" or \"sdpa\"")
        ac = d["autocast"] if isinstance(d["autocast"], list) else [d["autocast"]]
        if not ac:
            raise self.fail(p + ("autocast",), f"autocast must be one of {', '.join(AUTOCAST)} or a list of them")
        d["autocast"] = [self._str(p + ("autocast",), a, AUTOCAST) for a in ac]
        amp = any(a != "none" for a in d["autocast"])
        if amp and d["dtype"] not in ("auto", "float32"):
            raise self.fail(p + ("dtype",), f"autocast runs float32 weights in lower precision: with autocast = "
                                            f"{d['autocast']} set dtype = \"float32\" (or \"auto\"), not {d['dtype']!r}")
        if d["dtype"] == "auto":
            d["dtype"] = "bfloat16" if d["device"].startswith("cuda") and not amp else "float32"
        return d

    def recipe(self, raw: dict, extras: dict, path: tuple, what: str) -> dict[str, Any]:
        """A training recipe table, checked against harness.train.TrainRecipe's fields (the cell's seed is
        defaults.seed, not the recipe's): its DEFAULTS overridden, plus ``extras``."""
        fields = {k: getattr(TrainRecipe(), k) for k in RECIPE_FIELDS if k != "seed"}
        allowed = {**extras, **fields}
        self.check_keys(raw, allowed, path, what)
        t = {**extras, **TRAIN_DEFAULTS, **raw}
        for k, v in t.items():
            d = allowed[k]
            if k in ("options", "dataset", "split", "init", "eval_reducer"):
                continue
            if v is None and d is None:
                continue
            if k == "amp":
                if v != "auto" and not isinstance(v, bool):
                    raise self.fail(path + (k,), f"amp must be true, false or \"auto\", got {v!r}")
            elif isinstance(d, bool) or isinstance(v, bool):
                if not isinstance(v, bool):
                    raise self.fail(path + (k,), f"{k} must be true or false, got {v!r}")
            elif isinstance(d, int) and not isinstance(d, bool) and k != "warmup_epochs":
                t[k] = self._int(path + (k,), v, 0 if k in ("max_clips", "seed", "num_workers") else 1)
            elif isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise self.fail(path + (k,), f"{k} must be a number ≥ 0, got {v!r}")
        return t

    def train_settings(self) -> dict[str, Any]:
        p = ("train",)
        t = self.recipe(self.raw.get("train", {}), TRAIN_EXTRAS, p, "[train]")
        self._str(p + ("init",), t["init"], ("scratch", "checkpoint"))
        self._str(p + ("eval_reducer",), t["eval_reducer"], ("auto", "none"))
        return t

    def model(self, i: int, e: dict) -> ModelSpec:
        p = ("models", i)
        self.check_keys(e, MODEL_KEYS, p, self.entry_name("models", i))
        if "name" not in e:
            raise self.fail(p, f"{self.entry_name('models', i)} needs a name ({', '.join(MODEL_SIZES)})")
        name = self._str(p + ("name",), e["name"])
        if name not in MODEL_SIZES:
            close = difflib.get_close_matches(name, list(MODEL_SIZES), n=1)
            hint = f" — did you mean {close[0]!r}?" if close else ""
            raise self.fail(p + ("name",), f"unknown model {name!r}{hint}; choose from {', '.join(MODEL_SIZES)}")
        m = ModelSpec(id=self._str(p + ("id",), e.get("id", name)), name=name, path=p)
        m.num_frames = self._int(p + ("num_frames",), e.get("num_frames", 16), 2)
        m.img_size = self._int(p + ("img_size",), e.get("img_size", 224), 16)
        if m.num_frames % 2:
            raise self.fail(p + ("num_frames",), f"num_frames must be a multiple of the tubelet (2), got {m.num_frames}")
        if m.img_size % 16:
            raise self.fail(p + ("img_size",), f"img_size must be a multiple of the patch (16), got {m.img_size}")
        m.num_classes = self._int(p + ("num_classes",), e.get("num_classes", 0), 0)
        m.modes = self._modes(p + ("modes",), e.get("modes", list(MODES)))
        ckpt = e.get("checkpoint", "")
        pre = e.get("pretrain")
        if pre is not None:
            if not isinstance(pre, dict):
                raise self.fail(p + ("pretrain",), "pretrain must be a table, e.g. { dataset = \"synthetic\", epochs = 8 }")
            pre = self.recipe(pre, PRETRAIN_EXTRAS, p + ("pretrain",), "pretrain")
            self._str(p + ("pretrain", "dataset"), pre["dataset"])
            self._str(p + ("pretrain", "split"), pre["split"])
            if not isinstance(pre["options"], dict):
                raise self.fail(p + ("pretrain", "options"), "pretrain.options must be a table")
            if pre["dataset"] in available_datasets() and not dataset_format(pre["dataset"]).labelled:
                raise self.fail(p + ("pretrain", "dataset"), f"cannot train on the unlabelled dataset {pre['dataset']!r}")
        reported = False
        if isinstance(ckpt, _Missing) and pre is None:
            reported = True
            self.missing.append(p, f"{self.where(p + ('checkpoint',))}: {self.entry_name('models', i)} checkpoint — set "
                                f"{ckpt.var}=/path/to/checkpoint.pth or pass --set models.{m.id}.checkpoint=PATH")
            ckpt = ""
        elif isinstance(ckpt, _Missing):
            ckpt = ""
        ckpt = self._str(p + ("checkpoint",), ckpt)
        if ckpt in ("", None):
            if pre is None and not reported:
                raise self.fail(p, f"{self.entry_name('models', i)} has no weights: give checkpoint = \"PATH\" (a "
                                   f"checkpoint file or transformers model directory), checkpoint = \"{CHECKPOINT_NONE}\" (random weights), "
                                   "or pretrain = { dataset = \"synthetic\", epochs = 8 }")
            m.pretrain = pre
            m.checkpoint = ""
        elif ckpt == CHECKPOINT_NONE:
            m.checkpoint = CHECKPOINT_NONE
        else:
            path = Path(ckpt).expanduser()
            if self.check_paths and not path.exists():
                self.missing.append(p, f"{self.where(p + ('checkpoint',))}: {self.entry_name('models', i)} checkpoint "
                                    f"{str(path)!r} does not exist")
            elif self.check_paths:  # a config.json that does not fit is refused before any work
                problem = checkpoint_problem(path, name, m.num_frames, m.img_size, m.num_classes)
                if problem:
                    raise self.fail(p + ("checkpoint",), f"{self.entry_name('models', i)}: {problem}")
            m.checkpoint = str(path.resolve()) if path.exists() else str(path)
        return m

    def dataset(self, i: int, e: dict, defaults: dict) -> DatasetSpec:
        p = ("datasets", i)
        self.check_keys(e, DATASET_KEYS, p, self.entry_name("datasets", i))
        if "name" not in e:
            raise self.fail(p, f"{self.entry_name('datasets', i)} needs a name ({', '.join(self.dataset_names())})")
        name = self._str(p + ("name",), e["name"])
        if name in broken_datasets():  # installed but failing to import: say why, not "unknown"
            why = broken_datasets()[name]
            raise self.fail(p + ("name",), f"dataset {name!r} is installed but failed to load: {why}")
        names = self.dataset_names()
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f" — did you mean {close[0]!r}?" if close else ""
            raise self.fail(p + ("name",), f"unknown dataset {name!r}{hint}; choose from {', '.join(names)}")
        d = DatasetSpec(id=self._str(p + ("id",), e.get("id", name)), name=name, path=p)
        d.split = self._str(p + ("split",), e.get("split", "val"))
        d.train_split = self._str(p + ("train_split",), e.get("train_split", "train"))
        views = e.get("views", "1x1")
        try:  # a number (views = 3) gets the expected form too, not "must be a string"
            c, k = parse_views(self._str(p + ("views",), views) if isinstance(views, _Missing) else views)
        except ValueError as exc:
            raise self.fail(p + ("views",), str(exc)) from None
        d.views = f"{c}x{k}"
        if "max_clips" in e:
            d.max_clips = self._int(p + ("max_clips",), e["max_clips"], 0)
        d.modes = self._modes(p + ("modes",), e.get("modes", list(MODES)))
        d.skip_unreadable = e.get("skip_unreadable", False)
        if not isinstance(d.skip_unreadable, bool):
            raise self.fail(p + ("skip_unreadable",), f"skip_unreadable must be true or false, got {d.skip_unreadable!r}")
        if not d.labelled and "train" in d.modes and "modes" in e:
            raise self.fail(p + ("modes",), f"dataset {name!r} is unlabelled: it cannot be trained on; "
                                            "use modes = [\"inference\"]")
        if not d.labelled:
            d.modes = tuple(m for m in d.modes if m != "train")
        d.options = self.dataset_options(i, e, d)
        return d

    def dataset_options(self, i: int, e: dict, d: DatasetSpec) -> dict:
        """The entry's ``options`` with its ``manifest`` / ``root`` paths checked; paths the format needs and
        the suite does not give are collected, to be refused at once for the cells that use them."""
        p = ("datasets", i)
        opts = e.get("options", {})
        if not isinstance(opts, dict):
            raise self.fail(p + ("options",), f"options must be a table, got {opts!r}")
        opts = dict(opts)
        for k, v in opts.items():
            if isinstance(v, _Missing):
                raise self.fail(p + ("options", k), f"options.{k} reads ${{{v.var}}}, which is not set")
        for k in ("manifest", "root"):
            if k not in e:
                continue
            v = e[k]
            if isinstance(v, _Missing):
                if k == "manifest":
                    self.missing.append(
                        p, f"{self.where(p + (k,))}: {self.entry_name('datasets', i)} manifest — set {v.var}=/path/to/"
                        f"list.csv or pass --set datasets.{d.id}.manifest=PATH")
                continue
            v = self._str(p + (k,), v)
            if not v:
                continue
            path = Path(v).expanduser()
            ok = path.is_file() if k == "manifest" else path.is_dir()
            if self.check_paths and not ok:
                self.missing.append(p, f"{self.where(p + (k,))}: {self.entry_name('datasets', i)} {k} {str(path)!r} "
                                    f"{'is not a file' if k == 'manifest' else 'is not a folder'}")
            opts[k] = str(path.resolve()) if path.exists() else str(path)
        for need in dataset_format(d.name).needs:
            if need not in opts and not self.missing.has(p):
                self.missing.append(p, f"{self.where(p)}: {self.entry_name('datasets', i)} needs {need} = \"PATH\" "
                                    f"(or --set datasets.{d.id}.{need}=PATH)")
        return opts

    def dataset_names(self) -> list[str]:
        return sorted(available_datasets())

    def reducer(self, i: int, e: dict) -> ReducerSpec:
        p = ("reducers", i)
        self.check_keys(e, REDUCER_KEYS, p, self.entry_name("reducers", i))
        if "name" not in e:
            raise self.fail(p, f"{self.entry_name('reducers', i)} needs a name (see tokenbench list)")
        name = self._str(p + ("name",), e["name"])
        try:
            reducer_class(name)
        except UnknownReducerError as exc:
            raise self.fail(p + ("name",), str(exc)) from None
        r = ReducerSpec(id=self._str(p + ("id",), e.get("id", name)), name=name, path=p)
        params, sweep = e.get("params", {}), e.get("sweep", {})
        for k, v in (("params", params), ("sweep", sweep)):
            if not isinstance(v, dict):
                raise self.fail(p + (k,), f"{k} must be a table, e.g. {k} = {{ threshold = 0.1 }}")
        for k, vals in sweep.items():
            if not isinstance(vals, list) or not vals:
                raise self.fail(p + ("sweep", k), f"sweep.{k} must be a non-empty list of values, got {vals!r}")
            if k in params:
                raise self.fail(p + ("sweep", k), f"{k} is both in params and in sweep")
        r.params, r.sweep = dict(params), {k: list(v) for k, v in sweep.items()}
        for k in r.sweep:
            if "." in k:  # a path into a nested parameter (a composition's stage): it must lead somewhere
                try:
                    set_param(copy.deepcopy(r.params), k, r.sweep[k][0])
                except ValueError as exc:
                    raise self.fail(p + ("sweep", k), str(exc)) from None
        if "label" in e:
            r.label = self._str(p + ("label",), e["label"])
        r.modes = self._modes(p + ("modes",), e.get("modes", list(MODES)))
        if "datasets" in e:
            r.datasets = self._ids(p + ("datasets",), e["datasets"])
        if "models" in e:
            r.models = self._ids(p + ("models",), e["models"])
        if "attn_path" in e:
            r.attn_path = self._str(p + ("attn_path",), e["attn_path"], ATTN_PATHS)
        for variant in r.variants():
            self.build_reducer(r, variant)
        return r

    def param_path(self, r: ReducerSpec, msg: str) -> tuple:
        """The params/sweep key a reducer's error message names, for its line."""
        for k in list(r.sweep) + list(r.params):
            if re.search(rf"\b{re.escape(k)}\b", msg):
                return r.path + (("sweep" if k in r.sweep else "params"), k)
        return r.path + ("params",) if r.params else r.path

    def build_reducer(self, r: ReducerSpec, params: dict[str, Any]):
        try:
            return get_reducer(r.name, **params)
        except ReducerParamError as exc:
            raise self.fail(self.param_path(r, str(exc)), f"reducer {r.name!r}: {exc}") from None
        except Exception as exc:  # a plugin's constructor failing in its own way
            raise self.fail(self.param_path(r, str(exc)),
                            f"reducer {r.name!r} {params}: {type(exc).__name__}: {exc}") from None

    def check_references(self, models, datasets, reducers) -> None:
        mids, dids = {m.id for m in models}, {d.id for d in datasets}
        for r in reducers:
            for attr, ids, kind in (("datasets", dids, "datasets"), ("models", mids, "models")):
                for x in getattr(r, attr) or ():
                    if x not in ids:
                        raise self.fail(r.path + (attr,), f"{kind} {x!r} is not an id of any [[{kind}]] entry "
                                                          f"({', '.join(sorted(ids))})")
