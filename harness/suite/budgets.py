"""Token budgets of a suite's reducers, matched by **mean tokens per block** (docs/architecture.md §6).

The budget of a reducer setting is the mean, over the model's blocks, of the tokens entering each block's
MLP (``model.last_stats.tokens_mlp_per_layer``), divided by the un-reduced T'·H'·W'. Attention and the MLP of
block l see those tokens (ToMe merges before the MLP, STA prunes after a whole block), so GFLOPs follow it.

:func:`budget_fraction` measures it by running the real reducer in the real model (random weights) on a
clip. That is exact for the fixed-schedule reducers, whose counts do not depend on content: random
masking keeps ``round(keep·n)`` tubelets per clip, ToMe merges its schedule's r per block, STA drops
``min(r, ⌊c/2⌋)`` of every temporal group of c tokens, and a full clip's group sizes follow from the grid
alone. That claim is
checked, not assumed: :func:`fixed_budget` counts on a noise clip and on a still one and refuses a setting
that counts them differently (RLT, and random masking matched to RLT, which calibrates on the same clip).

``python -m tokenbench.harness.suite.budgets SUITE`` prints the budget of every content-independent setting
of a suite's inference cells (how the suites' values were chosen). A paper suite needs its paths given, but
any existing files do (nothing is read from them):
``--set models.checkpoint=FILE --set datasets.manifest=FILE``.
"""
from __future__ import annotations

import argparse
import math
import statistics
from typing import Any

import torch

from tokenbench.reducers import get_reducer

from ..model import build_model


def probe_clips(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Two clips as unlike as content gets, [1, 3, T, H, W]: Gaussian noise (nothing repeats) and one random
    frame held still (everything repeats). A reducer whose counts follow content counts them differently
    (RLT keeps every token of the first and one time step of the second)."""
    gen = torch.Generator().manual_seed(seed)
    t, s = model.num_frames, model.img_size
    frame = torch.randn(1, 3, 1, s, s, generator=gen)
    return {"noise": torch.randn(1, 3, t, s, s, generator=gen), "static": frame.expand(1, 3, t, s, s).clone()}


def budget_fraction(model: torch.nn.Module, reducer_name: str, params: dict[str, Any],
                    video: torch.Tensor) -> float:
    """Mean tokens per block (entering each block's MLP) of ``reducer_name(**params)`` in ``model`` on
    ``video`` [B, 3, T, H, W], as a fraction of the model's un-reduced tokens per clip."""
    reducer = get_reducer(reducer_name, **params).budget_reducer()  # threshold merging: its target schedule
    if reducer.calibrates:  # on the clips it runs on, as the runner does (a no-op unless it has a target)
        reducer.calibrate([video])
    with torch.no_grad():
        model(video, reducer=reducer)
    per_block = [statistics.fmean(clips) for clips in model.last_stats.tokens_mlp_per_layer]
    return statistics.fmean(per_block) / math.prod(model.grid)


def fixed_budget(model: torch.nn.Module, reducer_name: str, params: dict[str, Any]) -> float | None:
    """The budget of a setting whose counts do not depend on content, measured on both :func:`probe_clips`
    (which must agree); ``None`` for one that counts the two differently (RLT; random masking calibrated to
    RLT's keep ratio, which follows the content it calibrates on)."""
    fracs = {budget_fraction(model, reducer_name, params, v) for v in probe_clips(model).values()}
    return fracs.pop() if len(fracs) == 1 else None


def suite_budgets(suite: Any) -> list[tuple[str, str, float]]:
    """(model id, cell label, fraction) of every distinct content-independent inference setting of ``suite``
    (a loaded :class:`~tokenbench.harness.suite.Suite`), each on a random-weight copy of its model."""
    models = {m.id: m for m in suite.models}
    built: dict[str, torch.nn.Module] = {}
    seen, out = set(), []
    for c in suite.cells():
        mid = c.model_id or c.model
        what = (mid, c.reducer, repr(sorted(c.params.items())))
        if c.mode != "inference" or what in seen:
            continue
        seen.add(what)
        if mid not in built:
            m = models[mid]
            built[mid] = build_model(m.name, num_classes=2, num_frames=m.num_frames,
                                     img_size=m.img_size).eval()
        frac = fixed_budget(built[mid], c.reducer, c.params)
        if frac is not None:
            out.append((mid, c.label, frac))
    return out


def main(argv: list[str] | None = None) -> None:
    from . import load_suite

    ap = argparse.ArgumentParser(prog="python -m tokenbench.harness.suite.budgets",
                                 description="mean tokens per block of a suite's fixed-schedule reducers")
    ap.add_argument("suite", help="a built-in suite name or a .toml file")
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE overrides, as tokenbench run's")
    args = ap.parse_args(argv)
    suite = load_suite(args.suite, overrides=args.set, check_paths=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # counting, not timing: one thread wastes no time waiting on a busy machine
    try:
        for mid, label, frac in suite_budgets(suite):
            print(f"{mid:8s} {label:32s} {frac:.3f}")
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
