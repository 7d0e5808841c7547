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
    device = "auto"               # auto (cuda when available) | cpu | cuda | cuda:1 … (one this machine
                                  # lacks is refused, except for Slurm jobs)
    flops_check_clips = 1         # clips traced by fvcore to check the analytic FLOP count (0 = none)
    time_clips = 16               # clips (decoded, on the device) each timed repeat runs, a seeded sample
                                  # spread over the videos; 0 = all

    [train]                       # train-mode cells: harness.train's recipe (its DEFAULTS) overridden
    epochs = 3                    # … epochs, batch_size, lr, weight_decay, warmup_epochs, label_smoothing,
    batch_size = 32               #   min_lr, clip_grad (see harness/train.py), and:
    max_clips = 0                 # training clips used; 0 = the whole train split
    init = "scratch"              # scratch | checkpoint (fine-tune the model entry's weights)
    eval_reducer = "auto"         # auto (RLT stays on; random masking off; rlt_random → rlt) | none
    seeds = 1                     # each train arm trained with seeds seed, seed+1, …; the training table
                                  # shows the mean and the range over seeds

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
    id = "rlt"                    # how --set names it (default: name; an id given twice is refused, and so is
                                  # an entry running the same parameters, given or default, as another)
    params = { length_embedding = false }   # fixed parameters
    sweep = { threshold = [0.05, 0.1, 0.2] } # one cell per combination of the listed values
    label = "RLT"                 # a name for tables (default: reducer_label, e.g. "rlt τ=0.1")
    modes = ["inference"]         # restrict to some modes …
    datasets = ["k400"]           # … datasets (ids) …
    models = ["vit_b"]            # … and models (ids)
    attn_path = "auto"            # auto: equal-length batches take one dense batched attention call;
                                  # "packed": every arm of the cell per sequence (inference; label + " [packed]")

**Strings may read environment variables**: ``"${VAR}"`` (required) or ``"${VAR:-default}"``. A
required path that is not given is refused before any work, naming the variable and the ``--set``
that would give it.

**Overrides** (``tokenbench run --set KEY=VALUE``; VALUE is read as TOML, else as a plain string):
``defaults.repeats=3``, ``train.epochs=1``, ``models.vit_b.checkpoint=/ckpt/vit_b.pth`` (an entry by
its id), ``models.checkpoint=/x.pth`` (every model entry), ``datasets.k400.manifest=/data/val.csv``;
``model.`` / ``dataset.`` / ``data.`` / ``reducer.`` are accepted for the plural names. TOML's prefixed
integers (``0x1``, ``0o7``, ``0b1``) stay strings: ``--set datasets.views=0x1`` is a view protocol.

Relative paths are read from the current directory.

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
