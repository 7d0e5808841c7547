"""Plain downsampling at the input (reducers/downsample.py): ``temporal`` and ``spatial``."""
from __future__ import annotations

import pytest
import torch

from tokenbench.harness.model import build_model
from tokenbench.reducers import ReducerParamError, get_reducer
from tokenbench.reducers.base import Geometry
from tokenbench.reducers.downsample import SpatialDownsample, TemporalDownsample, evenly_spaced
from tokenbench.reducers.testing import check_reducer

VIDEO = torch.zeros(2, 3, 16, 64, 64)  # grid (8, 4, 4)


def _steps(sel) -> list[int]:
    return sel.keep[0, :, 0, 0].nonzero().squeeze(1).tolist()


def test_temporal_stride_keeps_the_first_step_of_each_group_with_run_lengths_to_the_next():
    sel = TemporalDownsample(stride=3).select(VIDEO)
    assert _steps(sel) == [0, 3, 6]  # 8 steps: groups {0,1,2}, {3,4,5}, {6,7}
    assert bool((sel.keep == sel.keep[:, :, :1, :1]).all())  # every cell of a kept step
    assert sel.lengths[0, :, 1, 2].tolist() == [3, 0, 0, 3, 0, 0, 2, 0]  # per cell they sum to T'
    assert int(sel.keep.sum()) == 2 * 3 * 16


def test_temporal_scale_keeps_n_evenly_spaced_steps():
    assert evenly_spaced(4, 3).tolist() == [0, 1, 2] and evenly_spaced(8, 3).tolist() == [0, 2, 5]
    assert _steps(TemporalDownsample(scale=0.75).select(torch.zeros(1, 3, 8, 32, 32))) == [0, 1, 2]
    assert _steps(TemporalDownsample(scale=0.5).select(VIDEO)) == [0, 2, 4, 6]  # = stride 2
    assert _steps(TemporalDownsample(scale=0.01).select(VIDEO)) == [0]  # never empties a clip


def test_spatial_stride_keeps_the_top_left_cell_of_each_block_at_every_step():
    video = torch.zeros(1, 3, 4, 80, 80)  # grid (2, 5, 5)
    sel = SpatialDownsample(stride=2).select(video)
    cells = sel.keep[0, 0].nonzero().tolist()
    assert cells == [[h, w] for h in (0, 2, 4) for w in (0, 2, 4)]
    assert torch.equal(sel.keep[0, 0], sel.keep[0, 1]) and bool((sel.lengths == sel.keep.long()).all())
    scaled = SpatialDownsample(scale=0.6).select(video).keep[0, 0]  # 3 of 5 rows and columns
    assert scaled.nonzero().tolist() == [[h, w] for h in (0, 1, 3) for w in (0, 1, 3)]


def test_kept_tokens_sit_at_their_own_grid_positions():
    model = build_model("vit_t", 5, num_frames=8, img_size=64).eval()  # grid (4, 4, 4)
    video = torch.randn(2, 3, 8, 64, 64)
    for red, expected in ((TemporalDownsample(stride=2), [t * 16 + c for t in (0, 2) for c in range(16)]),
                          (SpatialDownsample(stride=2), [t * 16 + h * 4 + w for t in range(4) for h in (0, 2)
                                                         for w in (0, 2)])):
        tokens = model.embed(video, red.select(video, model.geometry))
        assert tokens.pos[: len(expected)].tolist() == expected and tokens.seqlens() == [len(expected)] * 2
        full = model.embed(video)  # a kept token is exactly the un-reduced model's token at that slot
        assert torch.allclose(tokens.x[: len(expected)], full.x[expected])


def test_the_model_tells_the_reducer_its_geometry():
    video = torch.zeros(1, 3, 8, 64, 64)
    assert TemporalDownsample(stride=2).select(video, Geometry(4, 32)).keep.shape == (1, 2, 2, 2)


def test_budgets_are_exact_fractions():
    model = build_model("vit_t", 2, num_frames=8, img_size=112).eval()  # grid (4, 7, 7), the suites' model
    video = torch.randn(1, 3, 8, 112, 112)
    for name, params, kept in (("temporal", {"scale": 0.75}, 147),
                               ("spatial", {"scale": 0.86}, 4 * 36),
                               ("spatial", {"stride": 2}, 4 * 16)):
        with torch.no_grad():
            model(video, get_reducer(name, **params))
        assert model.last_stats.tokens_in == [kept] and model.last_stats.tokens_per_layer[-1] == [kept]


def test_bad_parameters_name_the_parameter():
    for name in ("temporal", "spatial"):
        with pytest.raises(ReducerParamError, match=f"{name}: stride"):
            get_reducer(name, stride=0)
        with pytest.raises(ReducerParamError, match=f"{name}: scale"):
            get_reducer(name, scale=1.5)
        with pytest.raises(ReducerParamError, match="exclude each other"):
            get_reducer(name, stride=2, scale=0.5)
        assert get_reducer(name).params() == {"stride": 2, "scale": None}  # neither given: one in two


@pytest.mark.parametrize("reducer", [TemporalDownsample(stride=2), SpatialDownsample(scale=0.5)])
def test_conformance(reducer):
    assert "select" in check_reducer(reducer).checks
