"""ToMe and STA batched over clips: the same tokens as the per-clip implementation they replaced.

``tests/data/reducer_golden.pt`` holds the outputs of the per-clip implementation (reducers/tome.py and
reducers/sta.py at commit 5eb799e, which loop over clips and groups) on the fixed inputs built below:
ToMe and STA hooks on packed batches of equal and unequal lengths, and whole vit_t forwards (T' = 8 and 4)
with several r, schedules, prop_attn on and off, with and without an input selection. Re-capture (only when
a behaviour change is intended, and say so in the commit) with::

    python tests/test_batched_reducers.py --capture

Each case checks: which tokens survive, in which order, with which pos and cu_seqlens — exactly; merged
features, sizes and logits to float32 rounding; the packed invariants; and that a clip's result does not
depend on its batch-mates (each clip run alone equals its slice of the batch).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from tokenbench.harness.model import build_model
from tokenbench.reducers import PackedTokens, Selection
from tokenbench.reducers.sta import STA
from tokenbench.reducers.testing import check_packed, per_clip_size
from tokenbench.reducers.tome import ToMe

GOLDEN = Path(__file__).parent / "data" / "reducer_golden.pt"
GRID8, GRID4 = (8, 4, 4), (4, 4, 4)


def _packed(lens, grid, dim=16, heads=2, hd=8, seed=0, full_order=False, sizes=True):
    """Random packed tokens: clip i has lens[i] tokens at distinct random positions of ``grid`` (in raster
    order when ``full_order``), sizes 1-4 (or all 1), and random keys."""
    g = torch.Generator().manual_seed(seed)
    total = math.prod(grid)
    pos = []
    for n in lens:
        p = torch.randperm(total, generator=g)[:n]
        pos.append(p.sort().values if full_order else p)
    n = sum(lens)
    size = torch.randint(1, 5, (n,), generator=g).float() if sizes else torch.ones(n)
    cu = F.pad(torch.tensor(lens, dtype=torch.int32).cumsum(0, dtype=torch.int32), (1, 0))
    tok = PackedTokens(x=torch.randn(n, dim, generator=g), cu_seqlens=cu, pos=torch.cat(pos), size=size,
                       grid=grid)
    keys = torch.randn(n, heads, hd, generator=g)
    if n > 12:  # near-duplicate keys: several tokens choose the same partner (many-into-one merges)
        keys[1:12:2] = keys[0] + 0.01 * keys[1:12:2]
    return tok, keys


def _tome_hook_cases():
    out = {}
    for lens, name in [([40, 40, 40], "equal"), ([40, 25, 3, 64], "unequal"), ([7], "single")]:
        for r in (1, 7, 20):
            tok, keys = _packed(lens, GRID8, seed=len(lens) + r)
            out[f"tome_hook_{name}_r{r}"] = (ToMe(r=r), "after_attention", tok, keys, 0)
    return out


def _sta_hook_cases():
    out = {}
    for grid, t in [(GRID8, 8), (GRID4, 4)]:
        full = math.prod(grid)
        for r in (2, 4, 8):
            for layer in (0, 4, 8):  # the three stages of a 12-block model
                # a stage's input: full clips at stage 0; fewer tokens later, as after earlier stages
                n = full if layer == 0 else full * 3 // 4
                tok, keys = _packed([n, n], grid, seed=r + layer, full_order=layer == 0, sizes=False)
                out[f"sta_hook_T{t}_equal_r{r}_l{layer}"] = (STA(r=r), "after_block", tok, keys, layer)
                tok, keys = _packed([n, n // 2, 9], grid, seed=100 + r + layer)
                out[f"sta_hook_T{t}_unequal_r{r}_l{layer}"] = (STA(r=r), "after_block", tok, keys, layer)
    return out


def _hook_cases():
    return {**_tome_hook_cases(), **_sta_hook_cases()}


def _model(frames):
    torch.manual_seed(0)
    return build_model("vit_t", num_classes=5, num_frames=frames, img_size=64).eval()


def _selection(b, grid, seed):
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(b, *grid, generator=g) < torch.linspace(0.95, 0.5, b).view(b, 1, 1, 1)
    keep[:, 0] = True  # RLT-like: the first time step always survives
    return Selection(keep=keep, lengths=keep.long())


def _model_cases():
    reducers = {
        "tome_r5": ToMe(r=5), "tome_r5_prop": ToMe(r=5, prop_attn=True), "tome_lin": ToMe(r=(6, -1.0)),
        "tome_list_prop": ToMe(r=[8, 4, 0, 2, 16], prop_attn=True), "sta_r2": STA(r=2), "sta_r4": STA(r=4),
    }
    out = {}
    for frames in (16, 8):
        grid = (frames // 2, 4, 4)
        for rname, red in reducers.items():
            if isinstance(red, STA) or frames == 16:
                out[f"model_T{grid[0]}_{rname}_full"] = (red, frames, None)
                out[f"model_T{grid[0]}_{rname}_selected"] = (red, frames, _selection(3, grid, seed=frames))
    return out


def _video(frames, b=3):
    return torch.randn(b, 3, frames, 64, 64, generator=torch.Generator().manual_seed(frames))


def _run_hook(case):
    red, hook, tok, keys, layer = case
    with torch.no_grad():
        out = getattr(red, hook)(tok, keys, layer, 12)
    return {"x": out.x, "pos": out.pos, "size": out.size, "cu": out.cu_seqlens}


_MODELS: dict[int, torch.nn.Module] = {}


def _shared_model(frames: int) -> torch.nn.Module:
    """One model per clip length for every test that asks (``setdefault`` would build one per call)."""
    if frames not in _MODELS:
        _MODELS[frames] = _model(frames)
    return _MODELS[frames]


def _run_model(case):
    red, frames, sel = case
    model = _shared_model(frames)
    with torch.no_grad():
        tokens = model.embed(_video(frames), sel)
        out = model.forward_tokens(tokens, red)
        logits = model.head(model.fc_norm(model.pool(out)))
    return {"logits": logits, "pos": out.pos, "size": out.size, "cu": out.cu_seqlens,
            "per_layer": torch.tensor(model.last_stats.tokens_per_layer)}


def _capture() -> None:
    golden = {name: _run_hook(c) for name, c in _hook_cases().items()}
    golden.update({name: _run_model(c) for name, c in _model_cases().items()})
    GOLDEN.parent.mkdir(exist_ok=True)
    torch.save(golden, GOLDEN)
    print(f"wrote {len(golden)} cases to {GOLDEN}")


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, weights_only=True)


def _assert_same(got, want, name):
    for key in ("pos", "cu", "per_layer"):
        if key in want:
            assert torch.equal(got[key], want[key]), f"{name}: {key} differs from the per-clip implementation"
    # logits pass through 12 blocks of BLAS: a looser tolerance, so that another CPU's kernels still pass
    for key, tol in (("x", 1e-6), ("size", 1e-6), ("logits", 1e-5)):
        if key in want:
            torch.testing.assert_close(got[key], want[key], rtol=10 * tol, atol=tol,
                                       msg=lambda m, key=key: f"{name}: {key}: {m}")


def _clip(tok, keys, i):
    cu = tok.cu_seqlens.tolist()
    a, b = cu[i], cu[i + 1]
    one = PackedTokens(x=tok.x[a:b], cu_seqlens=torch.tensor([0, b - a], dtype=torch.int32), pos=tok.pos[a:b],
                       size=tok.size[a:b], grid=tok.grid)
    return one, keys[a:b]


@pytest.mark.parametrize("name", list(_hook_cases()))
def test_hook_equals_the_per_clip_implementation(golden, name):
    case = _hook_cases()[name]
    red, hook, tok, keys, layer = case
    got = _run_hook(case)
    _assert_same(got, golden[name], name)
    out = PackedTokens(x=got["x"], cu_seqlens=got["cu"], pos=got["pos"], size=got["size"], grid=tok.grid)
    check_packed(out, name, grid=tok.grid, size_per_clip=per_clip_size(tok))
    # a clip alone gives exactly its slice of the batch
    ocu = got["cu"].tolist()
    for i in range(tok.batch_size):
        alone = _run_hook((red, hook, *_clip(tok, keys, i), layer))
        sl = slice(ocu[i], ocu[i + 1])
        assert torch.equal(alone["pos"], got["pos"][sl]), f"{name}: clip {i} alone keeps other tokens"
        torch.testing.assert_close(alone["x"], got["x"][sl], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(alone["size"], got["size"][sl], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", list(_model_cases()))
def test_forward_equals_the_per_clip_implementation(golden, name):
    red, frames, sel = _model_cases()[name]
    got = _run_model((red, frames, sel))
    _assert_same(got, golden[name], name)
    # each clip alone through the whole model: same logits as inside the batch
    video = _video(frames)
    model = _MODELS[frames]
    for i in range(video.shape[0]):
        one = None if sel is None else Selection(sel.keep[i:i + 1], sel.lengths[i:i + 1])
        with torch.no_grad():
            alone = model(video[i:i + 1], red, selection=one)
        torch.testing.assert_close(alone[0], got["logits"][i], rtol=1e-4, atol=1e-5)


# --- no device reads inside the hooks --------------------------------------------------------------------

class _DeviceReads(TorchFunctionMode):
    """Records every call that copies a device value to the host (a host sync on a GPU): tolist, item,
    bool/int/float of a tensor, and the ops whose output size depends on values (nonzero, unique,
    masked_select, repeat_interleave without output_size, boolean-mask indexing)."""

    READS = {"tolist", "item", "__bool__", "__int__", "__float__", "__index__", "nonzero", "unique",
             "unique_consecutive", "masked_select", "argwhere"}

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if name in self.READS or (name == "repeat_interleave" and kwargs.get("output_size") is None
                                  and len(args) > 1 and isinstance(args[1], torch.Tensor)):
            self.calls.append(name)
        if name == "__getitem__" and any(isinstance(a, torch.Tensor) and a.dtype == torch.bool
                                         for a in (args[1] if isinstance(args[1], tuple) else (args[1],))):
            self.calls.append("bool-mask indexing")
        return func(*args, **kwargs)


def _spied(cls):
    class Spied(cls):
        def after_attention(self, tokens, keys, layer, depth):
            with _DeviceReads() as spy:
                out = super().after_attention(tokens, keys, layer, depth)
            self.reads.append(spy.calls)
            return out

        def after_block(self, tokens, keys, layer, depth):
            with _DeviceReads() as spy:
                out = super().after_block(tokens, keys, layer, depth)
            self.reads.append(spy.calls)
            return out

    return Spied


def test_the_spy_sees_device_reads():
    t = torch.arange(6)
    with _DeviceReads() as spy:
        t.tolist(), bool(t.sum() > 0), t.nonzero(), t[t > 2], torch.repeat_interleave(t, t)
        torch.repeat_interleave(t, t, output_size=15)
    assert spy.calls == ["tolist", "__bool__", "nonzero", "bool-mask indexing", "repeat_interleave"]


def device_reads(cls, selected: bool = False, **params) -> list[list[str]]:
    """The device reads of ``cls(**params)`` in each hook of one forward pass of the 16-frame model (built once
    for every module that asks), on full clips or after a selection."""
    red = _spied(cls)(**params)
    red.reads = []
    with torch.no_grad():
        _shared_model(16)(_video(16), red, selection=_selection(3, GRID8, seed=16) if selected else None)
    return red.reads


@pytest.mark.parametrize("selected", [False, True], ids=["full", "selected"])
def test_tome_reads_nothing_back_from_the_device(selected):
    reads = device_reads(ToMe, selected, r=(6, -1.0), prop_attn=True)
    assert len(reads) == 2 * 12 and all(calls == [] for calls in reads), reads


def test_sta_reads_nothing_back_on_full_clips_and_once_a_stage_after_a_selection():
    reads = device_reads(STA, r=4)
    assert len(reads) == 2 * 12 and all(calls == [] for calls in reads), reads
    reads = device_reads(STA, selected=True, r=4)
    # content-adaptive clips: each stage reads its [B, G] group sizes (the output size depends on them)
    assert sorted(sum(reads, [])) == ["tolist"] * 3


class _ScalarReads(TorchDispatchMode):
    """aten-level reads of a value to the host: ``_local_scalar_dense`` (``.item()``, ``bool``/``int`` of a
    tensor) and the value-sized ops, as a GPU would sync on them."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten._local_scalar_dense, torch.ops.aten.nonzero):
            self.calls.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("reducer", [ToMe(r=5), STA(r=4)], ids=["tome", "sta"])
def test_a_single_clip_steps_through_every_block_without_a_host_read(reducer):
    # batch 1, where each host read would cost a whole clip's share: neither at the torch function level
    # (tolist, bool, nonzero) nor at the aten level
    model = _MODELS.setdefault(16, _model(16))
    red = _spied(type(reducer))(r=reducer.r)
    red.reads = []
    with torch.no_grad(), _ScalarReads() as aten:
        model(_video(16, b=1), red)
    assert len(red.reads) == 2 * 12 and all(calls == [] for calls in red.reads), red.reads
    assert aten.calls == []


if __name__ == "__main__":
    if sys.argv[1:] == ["--capture"]:
        _capture()
    else:
        sys.exit("usage: python tests/test_batched_reducers.py --capture")
