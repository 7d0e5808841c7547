"""The result record: one JSON line per finished (or failed) suite cell.

This module is the single definition the runner writes, ``results.load`` flattens and the report
reads. A record is a JSON object::

    {
      "schema": 1,
      "key": "3f2a…",                # hash of the cell's configuration (cell_key below)
      "suite": "default",
      "status": "ok" | "failed",
      "error": null | "what failed, naming the file/line",
      "cell": {                       # the configuration; everything that identifies the cell
        "model": "vit_t", "num_frames": 8, "img_size": 112, "checkpoint": "...",
        "dataset": "synthetic", "split": "val",
        "reducer": "rlt", "params": {"threshold": 0.1},
        "batch_size": 8, "mode": "inference" | "train",
        "dtype": "float32", "compile": false, "attn_backend": "auto", ...
      },
      "fingerprint": {                # where it ran (harness.fingerprint)
        "id": "cpu-<cpu>-2t-torch2.13.0", "device": "cpu", "device_name": "...", "threads": 2,
        "torch": "2.13.0", "cuda": null, "python": "3.11.7", "git_commit": "abc123", ...
      },
      "metrics": { METRIC: value, ... },   # names in METRICS below; absent = not measured
      "started": "2026-11-21T23:40:00Z", "finished": "...", "duration_s": 12.3,
      "command": "tokenbench run --suite default",
      "launcher": {"name": "slurm", "job_id": "4243_0", "hostname": "gpu-node-7"}   # only records
                                      # written by a submitit job (harness/launch.py)
    }

``results.load`` returns one DataFrame row per record with columns: ``key, suite, status, error,
started, finished, duration_s, command``; every ``cell`` field as its own column (``params`` as a
canonical JSON string, plus ``label``, a short human name like ``rlt τ=0.1``); ``fingerprint`` (the id)
and ``fp_<field>`` for the other fingerprint fields; and every metric of METRICS as a column (NaN /
None when absent).
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

SCHEMA_VERSION = 1

# metric name -> meaning (units in the name)
METRICS: dict[str, str] = {
    # cost
    "gflops": "GFLOPs per clip (multiply-adds, fvcore convention), mean over the clips measured",
    "gflops_fvcore": "GFLOPs per clip traced by fvcore on a sample (cross-check of gflops)",
    "gflops_attention": "share of gflops in attention matmuls (QKᵀ and AV), GFLOPs per clip",
    # tokens
    "tokens_in_mean": "tokens per clip entering the first block, mean",
    "tokens_in_min": "tokens per clip entering the first block, min",
    "tokens_in_max": "tokens per clip entering the first block, max",
    "tokens_total": "tokens per clip before reduction (T'·H'·W')",
    "tokens_per_layer": "list: mean tokens per clip after each block",
    "tokens_per_clip": "list: tokens entering the network, one entry per clip",
    # wall-clock (inference)
    "time_ms_median": "forward wall-clock per batch (ms), median over repeats, selection included",
    "time_ms_q1": "25th percentile of the same",
    "time_ms_q3": "75th percentile of the same",
    "baseline_time_ms_median": "the baseline (reducer none) per batch, timed interleaved in the same cell",
    "speedup": "median of the paired per-repeat ratios baseline / reducer, same cell",
    "speedup_q1": "25th percentile of the paired per-repeat ratios",
    "speedup_q3": "75th percentile of the paired per-repeat ratios",
    "speedup_ci_lo": "lower end of the speedup's 95 % interval (bootstrap of the median over repeats)",
    "speedup_ci_hi": "upper end of the same",
    "clips_per_s": "batch_size / median seconds per batch",
    "select_ms_median": "reducer.select alone per batch (ms), median",
    "decode_ms_per_clip": "decode + sample + resize per clip (ms), measured apart from the forward",
    "peak_mem_mb": "reducer arm's peak device memory (MB) above the resident clips, timed runs (CUDA only)",
    "baseline_peak_mem_mb": "the same for the baseline arm (CUDA only)",
    "repeats": "timed repeats per arm",
    "warmup": "warm-up runs per arm",
    # accuracy
    "top1": "top-1 accuracy (%) over the evaluated split",
    "top5": "top-5 accuracy (%)",
    "top1_baseline": "top-1 (%) of the same model without reducer, same cell's data",
    "num_clips": "clips evaluated",
    "views": "view protocol, 'clips×crops', e.g. '1x1'",
    # training
    "train_wall_s": "wall-clock to train (s), data loading included, evaluation excluded",
    "train_epochs": "epochs trained",
    "train_clips_per_s": "training clips per second",
    "train_tokens_mean": "tokens per clip seen in training, mean",
    "train_final_loss": "training loss of the last epoch",
}

CELL_FIELDS = ("model", "num_frames", "img_size", "checkpoint", "dataset", "split", "reducer", "params",
               "batch_size", "mode", "dtype", "compile", "attn_backend")


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def cell_key(cell: dict[str, Any]) -> str:
    """Stable hash of a cell's configuration: re-running a suite skips cells whose key is recorded."""
    return hashlib.sha256(canonical_json(cell).encode()).hexdigest()[:16]


def reducer_label(reducer: str, params: dict[str, Any] | None) -> str:
    """Short human name for tables and legends, e.g. ``rlt τ=0.1``, ``tome r=8``, ``none``."""
    params = dict(params or {})
    alias = {"threshold": "τ"}
    shown = [f"{alias.get(k, k)}={v}" for k, v in sorted(params.items()) if k not in ("seed",)]
    return reducer + (" " + " ".join(shown) if shown else "")
