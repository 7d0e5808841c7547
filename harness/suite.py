"""Suite files: what ``tokenbench run`` measures, as TOML (DESIGN.md §6).

A suite is the cross product **models × datasets × reducers (with parameter sweeps) × batch sizes ×
modes**, plus the settings every cell shares. Everything is validated before any work is done: an
unknown key (a typo), an unknown reducer or dataset, a parameter a reducer refuses, or a parameter that
cannot work on a model's token grid is refused with the file and LINE of the offending entry.

The format (every key optional unless marked)::

    [suite]
    name = "my-suite"             # results go to <out>/<name>/<fingerprint>/; default: the file's stem
    description = "what it compares"

    [defaults]                    # settings shared by every cell
    modes = ["inference"]         # "inference" and/or "train"
    batch_sizes = [1, 8]          # inference batch sizes: a sweep dimension
    repeats = 10                  # timed runs per arm (baseline and reducer, interleaved)
    warmup = 2                    # untimed runs per arm first
    threads = 0                   # torch CPU threads; 0 = torch's default (recorded either way)
    max_clips = 0                 # clips per dataset; 0 = all
    seed = 0
    dtype = "auto"                # float32 | float16 | bfloat16 | auto (bfloat16 on CUDA, else float32)
    compile = false               # torch.compile the model (recorded in every cell; slow to warm up on a CPU)
    autocast = "none"             # none | bfloat16 | float16, or a list — a sweep dimension of inference
                                  # cells, e.g. ["none", "bfloat16"]: float32 weights, matmuls and
                                  # attention (flash_attn / torch_varlen on CUDA) in the autocast dtype;
                                  # dtype "auto" then means float32
    attn_backend = "auto"         # auto | sdpa | torch_varlen | flash_attn
    device = "auto"               # auto (cuda when available) | cpu | cuda | cuda:1 …
    flops_check_clips = 1         # clips traced by fvcore to check the analytic FLOP count (0 = none)
    time_clips = 16               # clips (decoded, on the device) each timed repeat runs; 0 = all

    [train]                       # train-mode cells: harness.train's recipe (its DEFAULTS) overridden
    epochs = 3                    # … epochs, batch_size, lr, weight_decay, warmup_epochs, label_smoothing,
    batch_size = 32               #   min_lr, clip_grad (see harness/train.py), and:
    max_clips = 0                 # training clips used; 0 = the whole train split
    init = "scratch"              # scratch | checkpoint (fine-tune the model entry's weights)
    eval_reducer = "auto"         # auto (RLT stays on; random masking off; rlt_random → rlt) | none

    [[models]]                    # one table per model; repeat for more
    name = "vit_b"                # REQUIRED: vit_t | vit_s | vit_b | vit_l | vit_h
    id = "vit_b"                  # how --set and filters name it (default: name)
    num_frames = 16
    img_size = 224
    checkpoint = "${TOKENBENCH_K400_VIT_B}"   # a local VideoMAE-format file; "none" = random weights;
                                  # "" (or absent) = train per `pretrain`
    num_classes = 0               # 0 = the dataset's
    pretrain = { dataset = "synthetic", epochs = 6 }   # how to make weights when checkpoint is "":
                                  # harness.train's recipe keys + dataset, split, options, max_clips, seed;
                                  # trained once, cached in $TOKENBENCH_CACHE/models by this configuration
    modes = ["inference"]         # restrict this entry to some modes

    [[datasets]]
    name = "kinetics"             # REQUIRED: synthetic | samples | manifest | kinetics | ssv2 | …
    id = "k400"
    split = "val"
    train_split = "train"         # the split train-mode cells train on
    views = "5x3"                 # temporal clips × spatial crops, softmax averaged over views
    max_clips = 0                 # overrides defaults.max_clips
    manifest = "${TOKENBENCH_K400_MANIFEST}"   # `path label` list (manifest datasets)
    root = ""                     # folder the manifest's paths are relative to
    options = { sampling = "kinetics", stride = 4 }   # anything else get_dataset takes
    skip_unreadable = false       # true: leave out videos that do not decode (counted and named in each
                                  # record: skipped_videos, skipped_errors); false: the cell fails naming it
    modes = ["inference"]

    [[reducers]]
    name = "rlt"                  # REQUIRED: any reducer `tokenbench list` shows
    id = "rlt"                    # how --set names it (default: name)
    params = { length_embedding = false }   # fixed parameters
    sweep = { threshold = [0.05, 0.1, 0.2] } # one cell per combination of the listed values
    label = "RLT"                 # a name for tables (default: reducer_label, e.g. "rlt τ=0.1")
    modes = ["inference"]         # restrict to some modes …
    datasets = ["k400"]           # … datasets (ids) …
    models = ["vit_b"]            # … and models (ids)

**Strings may read environment variables**: ``"${VAR}"`` (required) or ``"${VAR:-default}"``. A
required path that is not given is refused before any work, naming the variable and the ``--set``
that would give it.

**Overrides** (``tokenbench run --set KEY=VALUE``; VALUE is read as TOML, else as a plain string):
``defaults.repeats=3``, ``train.epochs=1``, ``models.vit_b.checkpoint=/ckpt/vit_b.pth`` (an entry by
its id), ``models.checkpoint=/x.pth`` (every model entry), ``datasets.k400.manifest=/data/val.csv``;
``model.`` / ``dataset.`` / ``data.`` / ``reducer.`` are accepted for the plural names.

Relative paths are read from the current directory.

:func:`load_suite` parses and validates; :meth:`Suite.cells` expands to cells — dicts holding every
``schema.CELL_FIELDS`` field plus the extras that change a measurement (``views``, ``max_clips``,
``repeats``, ``warmup``, ``threads``, ``seed``, ``device``, ``flops_check_clips``, ``time_clips``,
``dataset_options``,
``train``, ``pretrain`` …) — each with its ``key`` (``schema.cell_key`` of the cell, ``key`` excluded).
"""
from __future__ import annotations

import difflib
import hashlib
import importlib.resources
import itertools
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cli import UserError
from .schema import CELL_FIELDS, canonical_json, cell_key, reducer_label

MODES = ("inference", "train")
DTYPES = ("auto", "float32", "float16", "bfloat16")
AUTOCAST = ("none", "bfloat16", "float16")
ATTN_BACKENDS = ("auto", "sdpa", "torch_varlen", "flash_attn")
KNOWN_DATASETS = ("synthetic", "samples", "manifest", "kinetics", "ssv2")
UNLABELLED_DATASETS = ("samples",)
MANIFEST_DATASETS = ("manifest", "kinetics", "k400", "ssv2")
CHECKPOINT_NONE = "none"  # random weights (timing and tokens only make sense)

TOP_KEYS = {
    "suite": "suite name and description",
    "defaults": "settings shared by every cell",
    "train": "settings of train-mode cells",
    "models": "[[models]] entries",
    "datasets": "[[datasets]] entries",
    "reducers": "[[reducers]] entries",
}
SUITE_KEYS = ("name", "description")
DEFAULTS: dict[str, Any] = {
    "modes": ["inference"],
    "batch_sizes": [8],
    "repeats": 10,
    "warmup": 2,
    "threads": 0,
    "max_clips": 0,
    "seed": 0,
    "dtype": "auto",
    "compile": False,
    "autocast": "none",
    "attn_backend": "auto",
    "device": "auto",
    "flops_check_clips": 1,
    "time_clips": 16,
}
TRAIN_EXTRAS: dict[str, Any] = {  # beyond harness.train.DEFAULTS (the recipe: epochs, batch_size, lr, …)
    "max_clips": 0,         # training clips used (0 = the whole split)
    "init": "scratch",      # scratch | checkpoint (fine-tune the model entry's weights)
    "eval_reducer": "auto",  # auto (harness.train.inference_reducer) | none
    "max_steps": None,
}
PRETRAIN_EXTRAS: dict[str, Any] = {"dataset": "synthetic", "split": "train", "options": {}, "max_clips": 0,
                                   "seed": 0}
# amp (bfloat16 autocast: true | false | "auto") comes with harness.train.DEFAULTS, like epochs or lr


def train_recipe() -> dict[str, Any]:
    """harness.train's default recipe (epochs, batch_size, lr, weight_decay, warmup_epochs, …)."""
    from .train import DEFAULTS as RECIPE

    return dict(RECIPE)


MODEL_KEYS = ("name", "id", "num_frames", "img_size", "checkpoint", "num_classes", "pretrain", "modes")
DATASET_KEYS = ("name", "id", "split", "train_split", "views", "max_clips", "manifest", "root", "options",
                "skip_unreadable", "modes")
REDUCER_KEYS = ("name", "id", "params", "sweep", "label", "modes", "datasets", "models")
# cell fields that do not identify a measurement (kept out of the key)
NOT_IN_KEY = ("key", "label")


class SuiteError(UserError):
    """A suite file that cannot run; the message names the file and line (or the --set) at fault."""


# ----------------------------------------------------------------------------------------------
# line numbers: tomllib reports none, so find tables and keys in the source text
# ----------------------------------------------------------------------------------------------
def _split_dotted(s: str) -> list[str]:
    parts, cur, quote = [], "", None
    for ch in s:
        if quote:
            if ch == quote:
                quote = None
            else:
                cur += ch
        elif ch in "\"'":
            quote = ch
        elif ch == ".":
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    parts.append(cur.strip())
    return parts


class SourceMap:
    """Where each table and key of a TOML document starts: ``line(("reducers", 2, "params", "r"))``.

    Array-of-tables entries are addressed by index. A path not found falls back to its longest known
    prefix (a key inside an inline table reports the line of that table's key).
    """

    _HEADER = re.compile(r"^\s*(\[\[?)\s*(.+?)\s*(\]\]?)\s*(#.*)?$")
    _KEY = re.compile(r"^\s*((?:[A-Za-z0-9_\-]+|\"[^\"]*\"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_\-]+|\"[^\"]*\"|'[^']*'))*)"
                      r"\s*=")

    def __init__(self, text: str):
        self.lines: dict[tuple, int] = {}
        counts: dict[tuple, int] = {}  # array-of-tables path -> entries seen
        arrays: set[tuple] = set()
        table: tuple = ()
        depth, ml = 0, None  # open brackets of a multi-line value; open multi-line string delimiter
        for no, line in enumerate(text.splitlines(), 1):
            if ml or depth:
                depth, ml = self._scan(line, depth, ml)
                continue
            m = self._HEADER.match(line)
            if m and not self._KEY.match(line):
                parts = _split_dotted(m.group(2))
                resolved: list = []
                for i, p in enumerate(parts):
                    resolved.append(p)
                    last = i == len(parts) - 1
                    if tuple(resolved) in arrays and not (last and m.group(1) == "[["):
                        resolved.append(counts[tuple(resolved)] - 1)
                if m.group(1) == "[[":
                    key = tuple(resolved)
                    arrays.add(key)
                    counts[key] = counts.get(key, 0) + 1
                    resolved.append(counts[key] - 1)
                table = tuple(resolved)
                self.lines.setdefault(table, no)
                continue
            k = self._KEY.match(line)
            if k:
                path = table + tuple(_split_dotted(k.group(1)))
                self.lines.setdefault(path, no)
                depth, ml = self._scan(line[k.end():], 0, None)

    @staticmethod
    def _scan(s: str, depth: int, ml: str | None) -> tuple[int, str | None]:
        """Track brackets and multi-line strings through one line of a value."""
        i, n = 0, len(s)
        while i < n:
            if ml:
                j = s.find(ml, i)
                if j < 0:
                    return depth, ml
                i, ml = j + 3, None
                continue
            ch = s[i]
            if s.startswith('"""', i) or s.startswith("'''", i):
                ml = s[i:i + 3]
                i += 3
            elif ch == '"':
                i += 1
                while i < n and s[i] != '"':
                    i += 2 if s[i] == "\\" else 1
                i += 1
            elif ch == "'":
                j = s.find("'", i + 1)
                i = n if j < 0 else j + 1
            elif ch == "#":
                break
            else:
                if ch in "[{":
                    depth += 1
                elif ch in "]}":
                    depth = max(0, depth - 1)
                i += 1
        return depth, ml

    def line(self, path: tuple) -> int | None:
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None


# ----------------------------------------------------------------------------------------------
# the parsed suite
# ----------------------------------------------------------------------------------------------
@dataclass
class ModelSpec:
    id: str
    name: str
    num_frames: int = 16
    img_size: int = 224
    checkpoint: str = ""  # a path, CHECKPOINT_NONE, or "" (train per pretrain)
    num_classes: int = 0
    pretrain: dict[str, Any] | None = None
    modes: tuple[str, ...] = MODES
    path: tuple = ()

    @property
    def grid(self) -> tuple[int, int, int]:
        return (self.num_frames // 2, self.img_size // 16, self.img_size // 16)

    @property
    def depth(self) -> int:
        from .model import MODEL_SIZES

        return MODEL_SIZES[self.name][1]

    def pretrain_config(self) -> dict[str, Any]:
        """Everything that decides the weights a self-trained model gets (its cache key)."""
        return {**(self.pretrain or {}), "model": self.name, "num_frames": self.num_frames,
                "img_size": self.img_size}

    @property
    def checkpoint_id(self) -> str:
        """What the cell records as its checkpoint: the path, ``none``, or ``trained:<hash>``."""
        if self.checkpoint:
            return self.checkpoint
        return "trained:" + hashlib.sha256(canonical_json(self.pretrain_config()).encode()).hexdigest()[:12]


@dataclass
class DatasetSpec:
    id: str
    name: str
    split: str = "val"
    train_split: str = "train"
    views: str = "1x1"
    max_clips: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    skip_unreadable: bool = False
    modes: tuple[str, ...] = MODES
    path: tuple = ()

    @property
    def labelled(self) -> bool:
        return self.name not in UNLABELLED_DATASETS


@dataclass
class ReducerSpec:
    id: str
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    sweep: dict[str, list] = field(default_factory=dict)
    label: str | None = None
    modes: tuple[str, ...] = MODES
    datasets: tuple[str, ...] | None = None
    models: tuple[str, ...] | None = None
    path: tuple = ()

    def variants(self) -> list[dict[str, Any]]:
        """The parameter sets of this entry: ``params`` merged with each combination of ``sweep``."""
        if not self.sweep:
            return [dict(self.params)]
        names = list(self.sweep)
        return [{**self.params, **dict(zip(names, combo))}
                for combo in itertools.product(*(self.sweep[n] for n in names))]


@dataclass
class Suite:
    name: str
    description: str
    file: str  # where it came from (shown in errors)
    defaults: dict[str, Any]
    train: dict[str, Any]
    models: list[ModelSpec]
    datasets: list[DatasetSpec]
    reducers: list[ReducerSpec]
    overrides: list[str] = field(default_factory=list)
    total_cells: int = 0  # before --only
    _cells: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def cells(self) -> list[dict[str, Any]]:
        """Every cell, inference cells first; each a dict with its ``key``."""
        return [dict(c) for c in self._cells]

    def resolved_device(self) -> str:
        return _resolve_device(self.defaults["device"])


def key_of(cell: dict[str, Any]) -> str:
    """A cell's key: ``schema.cell_key`` of its configuration (``key`` and ``label`` left out)."""
    return cell_key({k: v for k, v in cell.items() if k not in NOT_IN_KEY})


def cell_label(cell: dict[str, Any]) -> str:
    return cell.get("label") or reducer_label(cell["reducer"], cell.get("params"))


# ----------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------
def builtin_suites() -> list[str]:
    """Names of the suites shipped inside the package (``tokenbench run --suite NAME``)."""
    folder = importlib.resources.files("tokenbench.harness.suites")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def suite_source(name_or_path: str | os.PathLike) -> tuple[str, str, str]:
    """(text, display name of the file, default suite name) of a built-in suite name or a file path."""
    s = str(name_or_path)
    p = Path(s)
    if p.suffix == ".toml" or os.sep in s or p.is_file():
        if not p.is_file():
            raise SuiteError(f"suite file not found: {s}")
        return p.read_text(encoding="utf-8"), str(p), p.stem
    res = importlib.resources.files("tokenbench.harness.suites") / f"{s}.toml"
    if not res.is_file():
        close = difflib.get_close_matches(s, builtin_suites(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SuiteError(f"no built-in suite {s!r}{hint}; built-in: {', '.join(builtin_suites())}; "
                         "or give a path to a .toml file")
    return res.read_text(encoding="utf-8"), f"{s}.toml (built-in)", s


def load_suite(name_or_path: str | os.PathLike = "default", overrides: list[str] | tuple[str, ...] = (),
               env: dict[str, str] | None = None, check_paths: bool = True,
               only: list[str] | tuple[str, ...] = ()) -> Suite:
    """Read, override (``--set``), validate and expand a suite; keep the cells ``only`` selects
    (``FIELD=VALUE`` items, see :func:`select_cells`). Raises :class:`SuiteError` (a
    :class:`~tokenbench.harness.cli.UserError`) naming the file and line of the first problem, or every
    path the selected cells need and lack, at once."""
    text, display, stem = suite_source(name_or_path)
    return parse_suite(text, display, stem, overrides=overrides, env=env, check_paths=check_paths, only=only)


def parse_suite(text: str, file: str = "<suite>", default_name: str = "suite",
                overrides: list[str] | tuple[str, ...] = (), env: dict[str, str] | None = None,
                check_paths: bool = True, only: list[str] | tuple[str, ...] = ()) -> Suite:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        where = f"{file}:{m.group(1)}" if m else file
        raise SuiteError(f"{where}: not valid TOML: {exc}") from None
    return _Validator(raw, SourceMap(text), file, default_name, list(overrides),
                      os.environ if env is None else env, check_paths, only).run()


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


def select_cells(cells: list[dict[str, Any]], only: list[str] | tuple[str, ...]) -> list[int]:
    """Indices of the cells matching every ``FIELD=VALUE`` of ``only``. FIELD is a cell field (``reducer``,
    ``mode``, ``batch_size``, ``dataset``, ``model`` …; ``model``/``dataset`` also match entry ids) or
    ``label``."""
    keep = list(range(len(cells)))
    for item in only:
        if "=" not in item:
            raise SuiteError(f"--only {item!r}: expected FIELD=VALUE, e.g. reducer=rlt")
        k, v = (x.strip() for x in item.split("=", 1))
        fields = {"model": ("model", "model_id"), "dataset": ("dataset", "dataset_id")}.get(k, (k,))
        if k != "label" and not any(f in c for c in cells for f in fields):
            raise SuiteError(f"--only {item}: cells have no field {k!r} (fields: {', '.join(sorted(cells[0]))})")
        keep = [i for i in keep if (k == "label" and cell_label(cells[i]) == v)
                or any(str(cells[i].get(f)) == v for f in fields)]
    return keep


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_views(views: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[x×]\s*(\d+)\s*", str(views))
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise ValueError(f"views must read 'CLIPSxCROPS' like '5x3', got {views!r}")
    return int(m.group(1)), int(m.group(2))


class _Validator:
    def __init__(self, raw: dict, src: SourceMap, file: str, default_name: str, overrides: list[str],
                 env, check_paths: bool, only=()):
        self.raw, self.src, self.file = raw, src, file
        self.default_name = default_name
        self.overrides = overrides
        self.env = env
        self.check_paths = check_paths
        self.from_set: dict[tuple, str] = {}  # path -> the --set that put it there
        self.missing = _MissingPaths()
        self.only = list(only)
        self.cell_entries: list[tuple[tuple, tuple]] = []  # per cell: its [[models]] and [[datasets]] entries

    # --- locating -----------------------------------------------------------------------------
    def where(self, path: tuple) -> str:
        path = tuple(path)
        for n in range(len(path), 0, -1):
            if path[:n] in self.from_set:
                return f"--set {self.from_set[path[:n]]}"
        line = self.src.line(path)
        return f"{self.file}:{line}" if line else self.file

    def fail(self, path: tuple, msg: str) -> SuiteError:
        return SuiteError(f"{self.where(path)}: {msg}")

    def entry_name(self, section: str, i: int) -> str:
        e = self.raw.get(section, [])[i]
        ident = e.get("id") or e.get("name") or f"#{i + 1}"
        return f"[[{section}]] {ident!r}"

    # --- steps --------------------------------------------------------------------------------
    def run(self) -> Suite:
        self.apply_overrides()
        self.raw = self.interpolate(self.raw, ())
        self.check_keys(self.raw, TOP_KEYS, (), "the suite")
        for sec in ("suite", "defaults", "train"):
            if sec in self.raw and not isinstance(self.raw[sec], dict):
                raise self.fail((sec,), f"[{sec}] must be a table")
        for sec in ("models", "datasets", "reducers"):
            v = self.raw.get(sec)
            if v is not None and not (isinstance(v, list) and all(isinstance(e, dict) for e in v)):
                raise self.fail((sec,), f"{sec} must be [[{sec}]] tables")
            if not v:
                raise SuiteError(f"{self.file}: the suite has no [[{sec}]] entry")
        meta = self.raw.get("suite", {})
        self.check_keys(meta, SUITE_KEYS, ("suite",), "[suite]")
        defaults = self.defaults()
        train = self.train_settings()
        models = [self.model(i, e) for i, e in enumerate(self.raw["models"])]
        datasets = [self.dataset(i, e, defaults) for i, e in enumerate(self.raw["datasets"])]
        reducers = [self.reducer(i, e) for i, e in enumerate(self.raw["reducers"])]
        for kind, items in (("models", models), ("datasets", datasets), ("reducers", reducers)):
            seen: dict[str, int] = {}
            for i, it in enumerate(items):
                if kind != "reducers" and it.id in seen:
                    raise self.fail((kind, i), f"two [[{kind}]] entries have id {it.id!r}; give each its own id")
                seen[it.id] = i
        self.check_references(models, datasets, reducers)
        name = meta.get("name", self.default_name)
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+\-]*", name):
            raise self.fail(("suite", "name"), f"suite name must be a plain word (letters, digits, . _ + -), "
                                               f"got {name!r}")
        suite = Suite(name=name, description=str(meta.get("description", "")), file=self.file,
                      defaults=defaults, train=train, models=models, datasets=datasets, reducers=reducers,
                      overrides=self.overrides)
        cells = self.expand(suite)
        if not cells:
            raise SuiteError(f"{self.file}: the suite expands to no cell (check modes/datasets/models "
                             "restrictions)")
        keep = select_cells(cells, self.only)
        if not keep:
            raise SuiteError(f"--only {' '.join(self.only)} selects none of the {len(cells)} cells of {self.file}")
        suite._cells = [cells[i] for i in keep]
        suite.total_cells = len(cells)
        used = {e for i in keep for e in self.cell_entries[i]}
        missing = self.missing.for_entries(used)
        if missing:  # every path the selected cells need and lack, at once
            raise SuiteError(f"{self.file} cannot run: required paths are not given\n  " + "\n  ".join(missing))
        return suite

    def apply_overrides(self) -> None:
        alias = {"model": "models", "dataset": "datasets", "data": "datasets", "reducer": "reducers",
                 "default": "defaults"}
        for item in self.overrides:
            if "=" not in item:
                raise SuiteError(f"--set {item!r}: expected KEY=VALUE, e.g. defaults.repeats=3")
            key, value = item.split("=", 1)
            parts = [p.strip() for p in key.strip().split(".")]
            parts[0] = alias.get(parts[0], parts[0])
            value = _parse_value(value.strip())
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
                    self.from_set[(sec, i, keyname)] = item
            else:
                if len(parts) != 2:
                    raise SuiteError(f"--set {item}: write {sec}.KEY=VALUE")
                self.raw.setdefault(sec, {})[parts[1]] = value
                self.from_set[(sec, parts[1])] = item

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
        if not isinstance(d["compile"], bool):
            raise self.fail(p + ("compile",), f"compile must be true or false, got {d['compile']!r}")
        if d["compile"] and "inference" in d["modes"] and d["warmup"] < 1:
            raise self.fail(p + ("warmup",), "compile = true needs warmup ≥ 1: otherwise torch.compile's "
                                             "compilation lands in the timed runs")
        d["device"] = _resolve_device(d["device"])
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
        """A training recipe table: harness.train's DEFAULTS overridden, plus ``extras``."""
        recipe = train_recipe()
        allowed = {**extras, **recipe}  # the recipe's own defaults win
        self.check_keys(raw, allowed, path, what)
        t = {**allowed, **raw}
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
                t[k] = self._int(path + (k,), v, 0 if k in ("max_clips", "seed") else 1)
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
        from .model import MODEL_SIZES

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
            if pre["dataset"] in UNLABELLED_DATASETS:
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
                                   f"VideoMAE-format file), checkpoint = \"{CHECKPOINT_NONE}\" (random weights), "
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
                from .checkpoint import checkpoint_problem

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
        names = self.dataset_names()
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f" — did you mean {close[0]!r}?" if close else ""
            raise self.fail(p + ("name",), f"unknown dataset {name!r}{hint}; choose from {', '.join(names)}")
        d = DatasetSpec(id=self._str(p + ("id",), e.get("id", name)), name=name, path=p)
        d.split = self._str(p + ("split",), e.get("split", "val"))
        d.train_split = self._str(p + ("train_split",), e.get("train_split", "train"))
        d.views = self._str(p + ("views",), e.get("views", "1x1"))
        try:
            c, k = parse_views(d.views)
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
        if name in MANIFEST_DATASETS and "manifest" not in opts and not self.missing.has(p):
            self.missing.append(p, f"{self.where(p)}: {self.entry_name('datasets', i)} needs manifest = \"PATH\" "
                                f"(or --set datasets.{d.id}.manifest=PATH)")
        d.options = opts
        return d

    def dataset_names(self) -> list[str]:
        try:
            import tokenbench.datasets as ds

            for attr in ("available_datasets", "dataset_names"):
                fn = getattr(ds, attr, None)
                if callable(fn):
                    return sorted(set(fn()))
            reg = getattr(ds, "DATASETS", None)
            if reg:
                return sorted(reg)
        except Exception:
            pass
        return list(KNOWN_DATASETS)

    def reducer(self, i: int, e: dict) -> ReducerSpec:
        from tokenbench.reducers import UnknownReducerError, reducer_class

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
        if "label" in e:
            r.label = self._str(p + ("label",), e["label"])
        r.modes = self._modes(p + ("modes",), e.get("modes", list(MODES)))
        if "datasets" in e:
            r.datasets = self._ids(p + ("datasets",), e["datasets"])
        if "models" in e:
            r.models = self._ids(p + ("models",), e["models"])
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
        from tokenbench.reducers import ReducerParamError, get_reducer

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

    # --- expansion ----------------------------------------------------------------------------
    def expand(self, suite: Suite) -> list[dict[str, Any]]:
        from tokenbench.reducers import ReducerParamError

        dflt, cells = suite.defaults, []
        checked: set[tuple] = set()
        for mode in [m for m in MODES if m in dflt["modes"]]:
            for m in suite.models:
                if mode not in m.modes:
                    continue
                for d in suite.datasets:
                    if mode not in d.modes:
                        continue
                    for r in suite.reducers:
                        if mode not in r.modes or (r.datasets and d.id not in r.datasets) or (
                                r.models and m.id not in r.models):
                            continue
                        for params in r.variants():
                            ck = (r.path, canonical_json(params), m.grid, m.depth)
                            if ck not in checked:
                                checked.add(ck)
                                red = self.build_reducer(r, params)
                                try:
                                    red.check_geometry(m.grid, m.depth)
                                except ReducerParamError as exc:
                                    raise self.fail(self.param_path(r, str(exc)),
                                                    f"reducer {reducer_label(r.name, params)!r} cannot run on "
                                                    f"{m.id} ({m.num_frames}×{m.img_size}², token grid "
                                                    f"{m.grid}, {m.depth} blocks; [[models]] at "
                                                    f"{self.where(m.path)}): {exc}") from None
                            sizes = dflt["batch_sizes"] if mode == "inference" else [suite.train["batch_size"]]
                            amps = dflt["autocast"] if mode == "inference" else ["none"]
                            for bs in sizes:
                                for ac in amps:
                                    cells.append(self.with_autocast(self.cell(suite, mode, m, d, r, params, bs), ac))
                                    self.cell_entries.append((m.path, d.path))
        return cells

    def cell(self, suite: Suite, mode: str, m: ModelSpec, d: DatasetSpec, r: ReducerSpec,
             params: dict, bs: int) -> dict[str, Any]:
        dflt = suite.defaults
        cell: dict[str, Any] = {
            "model": m.name, "num_frames": m.num_frames, "img_size": m.img_size, "checkpoint": m.checkpoint_id,
            "dataset": d.name, "split": d.split, "reducer": r.name, "params": params, "batch_size": bs,
            "mode": mode, "dtype": dflt["dtype"], "compile": dflt["compile"], "attn_backend": dflt["attn_backend"],
            "device": dflt["device"], "views": d.views,
            "max_clips": d.max_clips if d.max_clips is not None else dflt["max_clips"],
            "seed": dflt["seed"], "threads": dflt["threads"],
        }
        assert all(f in cell for f in CELL_FIELDS)
        if mode == "inference":
            cell.update(repeats=dflt["repeats"], warmup=dflt["warmup"], flops_check_clips=dflt["flops_check_clips"],
                        time_clips=dflt["time_clips"])
        else:
            cell["train"] = {**suite.train, "split": d.train_split}
        if m.id != m.name:
            cell["model_id"] = m.id
        if d.id != d.name:
            cell["dataset_id"] = d.id
        if m.num_classes:
            cell["num_classes"] = m.num_classes
        if d.options:
            cell["dataset_options"] = d.options
        if d.skip_unreadable:
            cell["skip_unreadable"] = True
        if not m.checkpoint and m.pretrain is not None:
            cell["pretrain"] = m.pretrain_config()
        if r.label:
            cell["label"] = r.label if len(r.variants()) == 1 else f"{r.label} " + " ".join(
                f"{k}={params[k]}" for k in r.sweep)
        cell["key"] = key_of(cell)
        return cell

    @staticmethod
    def with_autocast(cell: dict[str, Any], autocast: str) -> dict[str, Any]:
        """The cell under ``torch.autocast(dtype=autocast)``; "none" leaves it (and its key) as it was."""
        if autocast == "none":
            return cell
        cell["label"] = f"{cell_label(cell)} [{autocast} autocast]"  # tables keep the two apart
        cell["autocast"] = autocast
        cell["key"] = key_of(cell)
        return cell


def describe(suite: Suite) -> str:
    """A few lines on what a suite will run (for ``tokenbench run --dry-run`` and logs)."""
    cells = suite.cells()
    by_mode: dict[str, int] = {}
    for c in cells:
        by_mode[c["mode"]] = by_mode.get(c["mode"], 0) + 1
    sel = f" (of {suite.total_cells}, --only)" if suite.total_cells and suite.total_cells != len(cells) else ""
    lines = [f"suite {suite.name} ({suite.file}): {len(cells)} cells{sel} — "
             + ", ".join(f"{n} {k}" for k, n in by_mode.items())]
    if suite.description:
        lines.append("  " + suite.description)
    lines.append("  models:   " + ", ".join(f"{m.id} ({m.name} {m.num_frames}×{m.img_size}², "
                                             f"{'trained here' if not m.checkpoint else m.checkpoint})"
                                             for m in suite.models))
    lines.append("  datasets: " + ", ".join(f"{d.id} ({d.name}/{d.split}, views {d.views})" for d in suite.datasets))
    labels = []
    for c in cells:
        lab = cell_label(c)
        if lab not in labels:
            labels.append(lab)
    lines.append("  reducers: " + ", ".join(labels))
    return "\n".join(lines)


__all__ = ["Suite", "SuiteError", "ModelSpec", "DatasetSpec", "ReducerSpec", "SourceMap", "load_suite",
           "parse_suite", "builtin_suites", "key_of", "cell_label", "parse_views", "describe"]
