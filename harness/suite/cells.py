"""Expansion: a validated suite → its cells (models × datasets × reducer variants × batch sizes × modes),
``--only`` selection, and the few lines ``--dry-run`` prints."""
from __future__ import annotations

import dataclasses
from typing import Any

from tokenbench.reducers import ReducerParamError

from ..errors import SuiteError
from ..schema import Cell, canonical_json, reducer_label
from ..shipped_weights import shipped_checkpoint
from .checker import Checker
from .spec import MODES, DatasetSpec, ModelSpec, ReducerSpec, Suite, param_at
from .validate import build_reducer, param_path


def select_cells(cells: list[Cell], only: list[str] | tuple[str, ...]) -> list[int]:
    """Indices of the cells matching every ``FIELD=VALUE`` of ``only``. FIELD is a cell field (``reducer``,
    ``mode``, ``batch_size``, ``dataset``, ``model`` …; ``model``/``dataset`` also match entry ids) or
    ``label``; VALUE may list alternatives separated by commas (``reducer=none,tome,sta``), except for a
    label, which may hold commas itself."""
    keep = list(range(len(cells)))
    for item in only:
        if "=" not in item:
            raise SuiteError(f"--only {item!r}: expected FIELD=VALUE, e.g. reducer=rlt")
        k, v = (x.strip() for x in item.split("=", 1))
        fields = {"model": ("model", "model_id"), "dataset": ("dataset", "dataset_id")}.get(k, (k,))
        if k != "label" and not any(f in c for c in cells for f in fields):
            raise SuiteError(f"--only {item}: cells have no field {k!r} (fields: {', '.join(sorted(cells[0]))})")
        alternatives = {v} if k == "label" else {x.strip() for x in v.split(",")}
        keep = [i for i in keep if (k == "label" and cells[i].label == v)
                or any(str(cells[i].get(f)) in alternatives for f in fields)]
    return keep

def expand(suite: Suite, ck: Checker) -> list[Cell]:
    """Every cell of a validated suite (models × datasets × reducer variants × batch sizes × modes),
    inference cells first; ``ck`` names the entry at fault when a reducer refuses a model's token grid, or two entries
    measure the same thing."""
    dflt, cells = suite.defaults, []
    checked: set[tuple] = set()
    effective: dict[tuple, dict] = {}  # (entry, params) -> every parameter of the reducer it builds
    runs: dict[str, ReducerSpec] = {}  # what a cell measures (its key with effective parameters) -> entry
    for mode in [m for m in MODES if m in dflt.modes]:
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
                        ident = (r.path, canonical_json(params), m.grid, m.depth)
                        if ident not in checked:
                            checked.add(ident)
                            red = build_reducer(ck, r, params)
                            effective[ident[:2]] = _effective_params(red, params)
                            try:
                                red.check_geometry(m.grid, m.depth)
                            except ReducerParamError as exc:
                                raise ck.fail(param_path(r, str(exc)),
                                              f"reducer {reducer_label(r.name, params)!r} cannot run on "
                                              f"{m.id} ({m.num_frames}×{m.img_size}², token grid "
                                              f"{m.grid}, {m.depth} blocks; [[models]] at "
                                              f"{ck.where(m.path)}): {exc}") from None
                        sizes = dflt.batch_sizes if mode == "inference" else [suite.train.recipe.batch_size]
                        amps = dflt.autocast if mode == "inference" else ["none"]
                        seeds = 1 if mode == "inference" else suite.train.seeds
                        for bs in sizes:
                            for ac in amps:
                                cell = with_autocast(make_cell(suite, mode, m, d, r, params, bs), ac)
                                cell = with_attn_path(cell, r.attn_path)
                                refuse_repeat(ck, runs, cell, r, effective[ident[:2]])
                                for i in range(seeds):  # seed 0 of a repeated arm keeps its key
                                    cells.append(cell.with_(seed=cell.seed + i) if i else cell)
    return cells


def refuse_repeat(ck: Checker, runs: dict[str, ReducerSpec], cell: Cell, r: ReducerSpec,
                  params: dict) -> None:
    """Two reducer entries (or one entry's sweep) measuring the same thing twice: refused, as two models
    or datasets with one id are. The same reducer with the same parameters, given or left at their
    defaults, on the same model, data and settings is the same measurement."""
    what = cell.with_(params=params, given_label=None).key
    if what not in runs:
        runs[what] = r
        return
    other = runs[what]
    if other.path == r.path:
        raise ck.fail(r.path + ("sweep",), f"{ck.entry_name('reducers', r.path[1])} lists the same "
                                           f"parameters twice: {reducer_label(r.name, cell.params)!r}")
    raise ck.fail(r.path, f"{ck.entry_name('reducers', r.path[1])} repeats "
                          f"{ck.entry_name('reducers', other.path[1])} (at {ck.where(other.path)}): "
                          f"both run {reducer_label(r.name, cell.params)!r} on {cell.where} ({cell.mode}, "
                          f"batch {cell.batch_size}); remove one or give them different parameters")


def make_cell(suite: Suite, mode: str, m: ModelSpec, d: DatasetSpec, r: ReducerSpec, params: dict,
              bs: int) -> Cell:
    dflt = suite.defaults
    label = None
    if r.label:
        label = r.label if len(r.variants()) == 1 else f"{r.label} " + " ".join(
            f"{k.rsplit('.', 1)[-1]}={param_at(params, k)}" for k in r.sweep)
    mode_fields: dict[str, Any] = (
        dict(repeats=dflt.repeats, warmup=dflt.warmup, flops_check_clips=dflt.flops_check_clips,
             time_clips=dflt.time_clips) if mode == "inference"
        else dict(train=suite.train.record(d.train_split)))
    return Cell(
        model=m.name, num_frames=m.num_frames, img_size=m.img_size, checkpoint=m.checkpoint_id,
        dataset=d.name, split=d.split, reducer=r.name, params=params, batch_size=bs, mode=mode,
        dtype=suite.dtype, compile=dflt.compile, attn_backend=dflt.attn_backend, device=suite.device,
        views=d.views, max_clips=d.max_clips if d.max_clips is not None else dflt.max_clips,
        seed=dflt.seed, threads=dflt.threads, **mode_fields,
        model_id=m.id if m.id != m.name else None, dataset_id=d.id if d.id != d.name else None,
        num_classes=m.num_classes or None, dataset_options=d.options or None,
        skip_unreadable=True if d.skip_unreadable else None,
        pretrain=m.pretrain_config() if not m.checkpoint and m.pretrain is not None else None,
        given_label=label)


def with_autocast(cell: Cell, autocast: str) -> Cell:
    """The cell under ``torch.autocast(dtype=autocast)``; "none" leaves it (and its key) as it was."""
    if autocast == "none":
        return cell
    # the label keeps the two apart in tables
    return cell.with_(autocast=autocast, given_label=f"{cell.label} [{autocast} autocast]")


def with_attn_path(cell: Cell, attn_path: str) -> Cell:
    """The cell with every arm on the per-sequence path; "auto" leaves it (and its key) as it was."""
    if attn_path == "auto" or cell.mode != "inference":
        return cell
    return cell.with_(attn_path=attn_path, given_label=f"{cell.label} [{attn_path}]")


def _effective_params(reducer: Any, params: dict) -> dict:
    """Every parameter of a built reducer (its ``params()``: its dataclass fields, a composition's stages
    with all theirs), so ``rlt`` and ``rlt threshold=0.1`` compare equal; a reducer that is not a dataclass
    is compared by the parameters given."""
    if not dataclasses.is_dataclass(reducer):
        return dict(params)
    return reducer.params()


def _weights_source(model_id: str, cells: list[Cell]) -> str:
    """Where a model without a checkpoint of the user's gets its weights: shipped with the package when its
    recipe is the shipped one's, else trained here (once, cached)."""
    pre = next((c.pretrain for c in cells if (c.model_id or c.model) == model_id and c.pretrain), None)
    return "shipped weights" if pre is not None and shipped_checkpoint(pre) else "trained here"


def describe(suite: Suite) -> str:
    """A few lines on what a suite will run (for ``tokenbench run --dry-run`` and logs)."""
    cells = suite.cells()
    by_mode: dict[str, int] = {}
    for c in cells:
        by_mode[c.mode] = by_mode.get(c.mode, 0) + 1
    sel = f" (of {suite.total_cells}, --only)" if suite.total_cells and suite.total_cells != len(cells) else ""
    lines = [f"suite {suite.name} ({suite.file}): {len(cells)} cells{sel} — "
             + ", ".join(f"{n} {k}" for k, n in by_mode.items())]
    if suite.description:
        lines.append("  " + suite.description)
    lines.append("  models:   " + ", ".join(f"{m.id} ({m.name} {m.num_frames}×{m.img_size}², "
                                             f"{m.checkpoint or _weights_source(m.id, cells)})"
                                             for m in suite.models))
    lines.append("  datasets: " + ", ".join(f"{d.id} ({d.name}/{d.split}, views {d.views})" for d in suite.datasets))
    labels = []
    for c in cells:
        lab = c.label
        if lab not in labels:
            labels.append(lab)
    lines.append("  reducers: " + ", ".join(labels))
    return "\n".join(lines)
