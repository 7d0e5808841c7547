"""Records as the report reads them: plain dicts from ``results.load``'s DataFrame, deduplicated and sorted.

Records come in as plain dicts (:func:`records_from_frame`): cell fields, ``label``, ``fingerprint``,
``fp_*`` fields and the metrics of :data:`tokenbench.harness.schema.METRIC_TABLE`, ``params`` parsed into
a dict, missing values as ``None``. Rows are sorted by a fixed key (model, input, dataset, batch size,
reducer in the order ``none, rlt, random, tome, sta, others A–Z``, then parameters by value).
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

from ..schema import canonical_json, reducer_label

# Reducers in the order tables and legends list them; others follow alphabetically.
REDUCER_ORDER = ("none", "rlt", "random", "tome", "sta", "temporal", "spatial", "compose")


def is_missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return type(v).__name__ in ("NAType", "NaTType")


def num(v: Any) -> float | None:
    """A metric as a float, or None when absent / NaN / not a number."""
    if is_missing(v) or isinstance(v, (list, tuple, dict)):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) or math.isinf(f) else f


def num_list(v: Any) -> list[float] | None:
    """A list metric (``tokens_per_layer``, ``tokens_per_clip``) as floats, or None."""
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except ValueError:
            return None
    if v is None or isinstance(v, (str, bytes, dict)) or not hasattr(v, "__iter__"):
        return None
    out = [num(x) for x in v]
    out = [x for x in out if x is not None]
    return out or None


def records_from_frame(df) -> list[dict[str, Any]]:
    """The DataFrame of ``results.load`` as a list of record dicts (see module docstring)."""
    out = []
    for row in df.to_dict("records"):
        r = {k: (None if not isinstance(v, (list, tuple, dict)) and is_missing(v) else v)
             for k, v in row.items()}
        params = r.get("params")
        if isinstance(params, str):
            try:
                params = json.loads(params)
            except ValueError:
                params = {"params": params}
        params = dict(params or {})
        r["params"] = params
        r["params_json"] = canonical_json(params)
        opts = r.get("dataset_options")
        if isinstance(opts, str):
            try:
                opts = json.loads(opts)
            except ValueError:
                opts = None
        r["dataset_options"] = dict(opts) if isinstance(opts, dict) else {}
        # a suite's dataset entry by its id (two entries of one format differ in options, e.g. static_share):
        # tables and figures show and group by it; the format (registry name) stays in dataset_name
        r["dataset_name"] = r.get("dataset")
        if r.get("dataset_id"):
            r["dataset"] = str(r["dataset_id"])
        r["reducer"] = str(r.get("reducer") or "?")
        r["label"] = r.get("label") or reducer_label(r["reducer"], params)
        r["fingerprint"] = str(r.get("fingerprint") or "unknown")
        r["suite"] = str(r.get("suite") or "unnamed")
        bs = num(r.get("batch_size"))
        r["batch_size"] = int(bs) if bs is not None else None
        out.append(r)
    return out


def forced_packed(r: dict) -> bool:
    """Whether every arm of the record's cell ran per sequence (the suite's ``attn_path = "packed"``,
    labelled ``[packed]``): its baseline arm ran the per-sequence path too, which an equal-length baseline
    does only when told to. (The loaded row's ``attn_path`` is the metric, the path the reducer arm ran.)"""
    return r.get("baseline_attn_path") == "packed" or str(r.get("label") or "").endswith("[packed]")


def tokens_per_block(r: dict) -> float | None:
    """Mean tokens per block: the mean over blocks of ``tokens_mlp_per_layer`` (tokens entering each block's
    MLP, averaged over clips), the quantity FLOPs follow; older records, which lack it, give
    ``tokens_per_layer`` (after each block: the same except for a reducer that prunes between attention and
    MLP, as STA does), and without either, tokens entering the network."""
    layers = num_list(r.get("tokens_mlp_per_layer")) or num_list(r.get("tokens_per_layer"))
    return sum(layers) / len(layers) if layers else num(r.get("tokens_in_mean"))


def sort_part(v: Any) -> tuple:
    """Total order over mixed values: numbers, then strings, then missing."""
    f = num(v) if not isinstance(v, str) else None
    if f is not None:
        return (0, f, "")
    if is_missing(v):
        return (2, 0.0, "")
    return (1, 0.0, str(v))


def reducer_rank(name: str) -> tuple:
    return (REDUCER_ORDER.index(name), "") if name in REDUCER_ORDER else (len(REDUCER_ORDER), name)


def params_key(params: dict[str, Any]) -> tuple:
    return tuple((k, sort_part(v) if not isinstance(v, (list, dict)) else (1, 0.0, canonical_json(v)))
                 for k, v in sorted(params.items()))


def checkpoint_of(r: dict) -> str:
    """A record's checkpoint: its weights' sha256 when recorded (two files holding the same weights are
    one checkpoint), else what the cell named (a path, ``none``, ``trained:<hash>``). A train record's
    ``checkpoint_sha256`` is of the weights it trained, different for every arm, so train records compare by
    the weights the cell started from (``init_checkpoint_sha256``; records older than it: the name)."""
    sha = r.get("checkpoint_sha256") if r.get("mode") != "train" else r.get("init_checkpoint_sha256")
    return f"sha256:{sha}" if isinstance(sha, str) and sha else str(r.get("checkpoint") or "")


def setting(r: dict) -> tuple:
    """What makes two records comparable: same model, input, checkpoint and data."""
    return tuple(checkpoint_of(r) if k == "checkpoint" else str(r.get(k)) if r.get(k) is not None else ""
                 for k in ("model", "num_frames", "img_size", "checkpoint", "dataset", "split"))


def sort_key(r: dict) -> tuple:
    return (str(r.get("model") or ""), sort_part(r.get("num_frames")), sort_part(r.get("img_size")),
            str(r.get("checkpoint") or ""), str(r.get("dataset") or ""), str(r.get("split") or ""),
            sort_part(r.get("batch_size")), reducer_rank(r["reducer"]), params_key(r["params"]), r["label"],
            str(r.get("key") or ""))


def dedupe(records: Iterable[dict]) -> tuple[list[dict], list[dict]]:
    """(ok, failed): the latest record per (suite, fingerprint, cell key); a failed cell that later
    succeeded on the same fingerprint is not listed as failed."""
    latest: dict[tuple, dict] = {}
    for r in records:
        k = (r["suite"], r["fingerprint"], str(r.get("key") or r["params_json"] + repr(sort_key(r))),
             r.get("status") == "ok")
        when = (str(r.get("finished") or ""), str(r.get("started") or ""))
        if k not in latest or when >= (str(latest[k].get("finished") or ""),
                                       str(latest[k].get("started") or "")):
            latest[k] = r
    ok = [r for k, r in latest.items() if k[3]]
    done = {k[:3] for k in latest if k[3]}
    failed = [r for k, r in latest.items() if not k[3] and k[:3] not in done]
    return sorted(ok, key=sort_key), sorted(failed, key=lambda r: (r["fingerprint"], sort_key(r)))


def model_names(records: list[dict]) -> dict[tuple, str]:
    """Display name of each (model, frames, size, checkpoint): the bare model name unless the same
    model appears with several inputs or checkpoints, then with ``16×224²`` (and the checkpoint's short hash,
    or its file name for records without one)."""
    variants: dict[str, set] = {}
    for r in records:
        variants.setdefault(str(r.get("model")), set()).add(setting(r)[:4])
    names = {}
    for model, vs in variants.items():
        geoms = {v[1:3] for v in vs}
        for v in vs:
            name = model
            if len(geoms) > 1:
                name += f" {v[1]}×{v[2]}²"
            if len(vs) > len(geoms) and v[3]:  # a checkpoint by its short hash, else by its file name
                sha = v[3].removeprefix("sha256:") if v[3].startswith("sha256:") else None
                name += f" ({sha[:12] if sha else v[3].replace(chr(92), '/').rsplit('/', 1)[-1]})"
            names[v] = name
    return names


