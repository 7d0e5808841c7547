"""Running a suite's cells (docs/architecture.md §5–7), one step a module:

* ``plan``      — the one dispatch plan every launcher follows: the cells not recorded yet, and the
                  self-trained models to train first;
* ``clips``     — a cell's clips, decoded once per process (each decode timed), in memory or streamed;
* ``models``    — its model (a checkpoint, or self-trained once and cached on disk under a file lock) and
                  reducer (calibrated on the cell's clips when it says so), and the per-process cache;
* ``measure``   — accuracy, tokens, GFLOPs (fvcore-checked) and wall-clock of an inference cell, or
                  training then evaluation of a train cell;
* ``cell``      — one cell, one record (:func:`run_cell`; a failing cell is a failed record, never a crash);
* ``summary``   — what a run did (:class:`RunSummary`); a cell claimed, run, appended (:func:`finish_cell`);
* ``inprocess`` — ``--launcher inprocess``: every cell in this process (:func:`run_suite`);
* ``launch``    — ``--launcher local|slurm``: one submitit job per cell (:func:`launch`), with
* ``executors`` — the submitit executors alone.

Self-trained weights are cached in ``$TOKENBENCH_CACHE`` (default ``~/.cache/tokenbench``)/models.
"""
from ..paths import cache_root
from .cell import run_cell
from .clips import ClipSet, load_clipset
from .common import DTYPES, hardware_fingerprint, torch_threads, utc_now
from .inprocess import run_suite
from .measure import autocast_for
from .models import RunCache, ensure_pretrained, pretrained_path
from .plan import Plan, make_plan, pending_pretrains
from .summary import RunSummary, finish_cell

__all__ = ["run_cell", "ClipSet", "load_clipset", "DTYPES", "cache_root", "hardware_fingerprint", "torch_threads",
           "utc_now", "RunSummary", "run_suite", "autocast_for", "RunCache", "ensure_pretrained", "pretrained_path",
           "Plan", "make_plan", "pending_pretrains", "finish_cell"]
