"""Records as the report reads them: :class:`Record`, typed, read straight from the records files,
deduplicated and sorted.

A :class:`Record` holds the cell's identity as fields (``model``, ``dataset``, ``reducer``, ``params`` as
a dict, ``label``, ``batch_size``, ``fingerprint`` …) and its metrics as recorded, read by name; missing
values read as ``None``. Rows are sorted by a fixed key (model, input, dataset, batch size,
reducer in the order ``none, rlt, random, tome, sta, others A–Z``, then parameters by value).
"""
from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..record_files import iter_records
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


@dataclass(frozen=True, eq=False)
class Record:
    """One result record as the report reads it: the cell's identity typed, its metrics as recorded.

    Read straight from the record's JSON (:meth:`of`), with no flat row or DataFrame between. ``dataset`` is
    the suite's dataset entry (its ``dataset_id``; two entries of one format differ in options, e.g.
    static_share): tables and figures show and group by it; the format (registry name) is ``dataset_name``.
    A metric is read by name (:meth:`num`, :meth:`nums`, :meth:`text`); a name the record's metrics lack reads
    the cell's field of that name (``views``, ``checkpoint_sha256``)."""

    key: str
    suite: str
    status: str
    fingerprint: str                 # the hardware fingerprint's id: timings compare only within one
    machine: dict[str, Any]          # the fingerprint's other fields (device, torch, git_commit, …)
    cell: dict[str, Any]             # the record's cell as written
    metrics: dict[str, Any]
    model: str | None
    dataset: str | None
    dataset_name: str | None
    reducer: str
    params: dict[str, Any]
    label: str
    batch_size: int | None
    mode: str | None
    error: str | None = None
    started: str | None = None
    finished: str | None = None
    command: str | None = None

    @classmethod
    def of(cls, rec: dict[str, Any]) -> Record:
        cell = dict(rec.get("cell") or {})
        machine = dict(rec.get("fingerprint") or {})
        fingerprint = machine.pop("id", None)
        params = cell.get("params")
        if isinstance(params, str):
            try:
                params = json.loads(params)
            except ValueError:
                params = {"params": params}
        params = dict(params or {})
        reducer = str(cell.get("reducer") or "?")
        bs = num(cell.get("batch_size"))
        return cls(
            key=str(rec.get("key") or ""), suite=str(rec.get("suite") or "unnamed"),
            status=str(rec.get("status")),
            fingerprint=str(fingerprint or "unknown"), machine=machine, cell=cell,
            metrics=dict(rec.get("metrics") or {}), model=cell.get("model"),
            dataset=str(cell["dataset_id"]) if cell.get("dataset_id") else cell.get("dataset"),
            dataset_name=cell.get("dataset"), reducer=reducer, params=params,
            label=cell.get("label") or reducer_label(reducer, params),
            batch_size=int(bs) if bs is not None else None,
            mode=cell.get("mode"), error=rec.get("error"), started=rec.get("started"),
            finished=rec.get("finished"), command=rec.get("command"))

    @functools.cached_property  # a key in dedupe, styles and every table's grouping
    def params_json(self) -> str:
        return canonical_json(self.params)

    @property
    def dataset_options(self) -> dict[str, Any]:
        opts = self.cell.get("dataset_options")
        return dict(opts) if isinstance(opts, dict) else {}

    def value(self, name: str) -> Any:
        """Metric ``name`` as recorded (else the cell's field of that name); None when missing."""
        v = self.metrics[name] if name in self.metrics else self.cell.get(name)
        return None if not isinstance(v, (list, tuple, dict)) and is_missing(v) else v

    def text(self, name: str) -> Any:
        return self.value(name)

    def num(self, name: str) -> float | None:
        return num(self.value(name))

    def nums(self, name: str) -> list[float] | None:
        return num_list(self.value(name))


def read_records(files: Iterable[Path]) -> list[Record]:
    """The records of the files named, each file's newest record per (key, fingerprint, suite)."""
    out: list[Record] = []
    for f in files:
        recs = [Record.of(r) for r in iter_records(f)]
        last = {(r.key, r.fingerprint, r.suite): i for i, r in enumerate(recs)}
        out += [recs[i] for i in sorted(last.values())]
    return out


def forced_packed(r: Record) -> bool:
    """Whether every arm of the record's cell ran per sequence (the suite's ``attn_path = "packed"``,
    labelled ``[packed]``): its baseline arm ran the per-sequence path too, which an equal-length baseline
    does only when told to. (The record's ``attn_path`` value is the metric, the path the reducer arm ran.)"""
    return r.value("baseline_attn_path") == "packed" or r.label.endswith("[packed]")


def tokens_per_block(r: Record) -> float | None:
    """Mean tokens per block: the mean over blocks of ``tokens_mlp_per_layer`` (tokens entering each block's
    MLP, averaged over clips), the quantity FLOPs follow; older records, which lack it, give
    ``tokens_per_layer`` (after each block: the same except for a reducer that prunes between attention and
    MLP, as STA does), and without either, tokens entering the network."""
    layers = r.nums("tokens_mlp_per_layer") or r.nums("tokens_per_layer")
    return sum(layers) / len(layers) if layers else r.num("tokens_in_mean")


def order_value(v: Any) -> tuple:
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
    return tuple((k, order_value(v) if not isinstance(v, (list, dict)) else (1, 0.0, canonical_json(v)))
                 for k, v in sorted(params.items()))


def checkpoint_of(r: Record) -> str:
    """A record's checkpoint: its weights' sha256 when recorded (two files holding the same weights are
    one checkpoint), else what the cell named (a path, ``none``, ``trained:<hash>``). A train record's
    ``checkpoint_sha256`` is of the weights it trained, different for every arm, so train records compare by
    the weights the cell started from (``init_checkpoint_sha256``; records older than it: the name)."""
    sha = r.cell.get("checkpoint_sha256") if r.mode != "train" else r.cell.get("init_checkpoint_sha256")
    return f"sha256:{sha}" if isinstance(sha, str) and sha else str(r.cell.get("checkpoint") or "")


def setting(r: Record) -> tuple:
    """What makes two records comparable: same model, input, checkpoint and data."""
    return (_text(r.model), _text(r.cell.get("num_frames")), _text(r.cell.get("img_size")), checkpoint_of(r),
            _text(r.dataset), _text(r.cell.get("split")))


def _text(v: Any) -> str:
    return "" if v is None else str(v)


def sort_key(r: Record) -> tuple:
    return (str(r.model or ""), order_value(r.cell.get("num_frames")), order_value(r.cell.get("img_size")),
            str(r.cell.get("checkpoint") or ""), str(r.dataset or ""), str(r.cell.get("split") or ""),
            order_value(r.batch_size), reducer_rank(r.reducer), params_key(r.params), r.label, r.key)


def dedupe(records: Iterable[Record]) -> tuple[list[Record], list[Record]]:
    """(ok, failed): the latest record per (suite, fingerprint, cell key); a failed cell that later
    succeeded on the same fingerprint is not listed as failed."""
    latest: dict[tuple, Record] = {}
    for r in records:
        k = (r.suite, r.fingerprint, r.key or r.params_json + repr(sort_key(r)), r.status == "ok")
        when = (str(r.finished or ""), str(r.started or ""))
        if k not in latest or when >= (str(latest[k].finished or ""), str(latest[k].started or "")):
            latest[k] = r
    ok = [r for k, r in latest.items() if k[3]]
    done = {k[:3] for k in latest if k[3]}
    failed = [r for k, r in latest.items() if not k[3] and k[:3] not in done]
    return sorted(ok, key=sort_key), sorted(failed, key=lambda r: (r.fingerprint, sort_key(r)))


def model_names(records: list[Record]) -> dict[tuple, str]:
    """Display name of each (model, frames, size, checkpoint): the bare model name unless the same
    model appears with several inputs or checkpoints, then with ``16×224²`` (and the checkpoint's short hash,
    or its file name for records without one)."""
    variants: dict[str, set] = {}
    for r in records:
        variants.setdefault(str(r.model), set()).add(setting(r)[:4])
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


