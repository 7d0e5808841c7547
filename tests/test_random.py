"""Random masking (reducers/random.py): counts, seeding, and calibration to RLT's keep ratio."""
from __future__ import annotations

import pytest
import torch

from tokenbench.reducers import ReducerParamError, get_reducer
from tokenbench.reducers.random import RandomMasking
from tokenbench.reducers.rlt import RLT, rlt_keep_ratio
from tokenbench.reducers.testing import check_reducer


def _static(b=1, t=16, s=64, seed=0):
    img = torch.randn(b, 3, 1, s, s, generator=torch.Generator().manual_seed(seed))
    return img.expand(b, 3, t, s, s).contiguous()


def _changing(b=1, t=16, s=64):
    return (0.5 * torch.arange(float(t))).view(1, 1, t, 1, 1).expand(b, 3, t, s, s).contiguous()


def _half(s=64):
    """A clip whose left half is static and whose right half changes every frame: keeps 1/8·½ + ½."""
    v = _static(s=s)
    v[..., s // 2 :] = _changing(s=s)[..., s // 2 :]
    return v


def test_keeps_the_fraction_and_lengths_one():
    sel = RandomMasking(keep=0.25).select(torch.zeros(3, 3, 16, 64, 64))
    assert sel.keep.flatten(1).sum(1).tolist() == [32, 32, 32]
    assert torch.equal(sel.lengths, sel.keep.long())
    assert not torch.equal(sel.keep[0], sel.keep[1])  # clips are masked independently


def test_same_seed_same_choice_other_seed_other_choice():
    v = torch.zeros(2, 3, 16, 64, 64)
    a, b, c = RandomMasking(seed=1), RandomMasking(seed=1), RandomMasking(seed=2)
    assert torch.equal(a.select(v).keep, b.select(v).keep)
    assert not torch.equal(RandomMasking(seed=1).select(v).keep, c.select(v).keep)


def test_rlt_keep_ratio_on_constructed_clips():
    assert rlt_keep_ratio([_static()]) == pytest.approx(1 / 8)
    assert rlt_keep_ratio([_changing()]) == 1.0
    # mean over clips, across batches of different sizes
    assert rlt_keep_ratio([_static(b=2), _changing(b=1), _half()]) == pytest.approx(
        (1 / 8 + 1 / 8 + 1 + (1 / 16 + 1 / 2)) / 4)
    with pytest.raises(ValueError, match="no clips"):
        rlt_keep_ratio([])


def test_calibrate_sets_keep_to_rlt_mean_ratio():
    data = [_static(b=2), torch.cat([_changing(), _half()])]
    r = RandomMasking(match_rlt=0.1, seed=3)
    ratio = r.calibrate(iter(data))
    expected = sum(RLT(threshold=0.1).select(v).keep.flatten(1).float().mean(1).sum().item() for v in data) / 4
    assert ratio == pytest.approx(expected) and r.keep == ratio
    assert ratio == pytest.approx((1 / 8 + 1 / 8 + 1 + 9 / 16) / 4)
    # the budget is spent: every clip keeps round(ratio · N) tubelets
    sel = r.select(torch.zeros(2, 3, 16, 64, 64))
    assert sel.keep.flatten(1).sum(1).tolist() == [round(ratio * 128)] * 2
    assert r.params()["keep"] == ratio and r.params()["match_rlt"] == 0.1  # recorded with results


def test_calibration_follows_the_rlt_threshold():
    # a clip whose right half changes by 0.3 per compared frame pair: kept at τ = 0.1, dropped at τ = 0.5
    v = _static()
    v[:, :, :, :, 32:] += (0.1 * torch.arange(16.0)).view(1, 1, 16, 1, 1)
    low, high = RandomMasking(match_rlt=0.1), RandomMasking(match_rlt=0.5)
    assert low.calibrate([v]) == pytest.approx((16 + 7 * 8) / 128)
    assert high.calibrate([v]) == pytest.approx(1 / 8)


def test_uncalibrated_match_refuses_to_select():
    r = RandomMasking(match_rlt=0.1)
    with pytest.raises(RuntimeError, match="calibrate"):
        r.select(torch.zeros(1, 3, 16, 64, 64))


def test_calibrate_without_match_is_a_noop_that_reads_nothing():
    def never():
        raise AssertionError("calibrate read the data although match_rlt is unset")
        yield  # pragma: no cover

    r = RandomMasking(keep=0.3)
    assert r.calibrate(never()) is None and r.keep == 0.3


def test_fresh_keeps_the_calibration():
    r = RandomMasking(match_rlt=0.1, seed=5)
    r.calibrate([_half()])
    twin = r.fresh()
    v = torch.zeros(2, 3, 16, 64, 64)
    assert twin.keep == r.keep
    assert torch.equal(twin.select(v).keep, RandomMasking(keep=r.keep, seed=5).select(v).keep)
    with pytest.raises(ReducerParamError, match="exclude each other"):  # measured keep + match_rlt: refused
        RandomMasking(**r.params())
    with pytest.raises(RuntimeError, match="calibrate"):  # match_rlt alone must calibrate again
        RandomMasking(match_rlt=0.1, seed=5).select(v)


def test_select_among_masks_within_a_selection():
    keep = RLT().select(torch.cat([_half(), _static()])).keep  # 72 and 16 kept
    r = RandomMasking(keep=0.5, seed=0)
    sub = r.select_among(keep)
    assert bool((sub <= keep).all())
    assert sub.flatten(1).sum(1).tolist() == [36, 8]
    one = RandomMasking(keep=0.01).select_among(keep)
    assert one.flatten(1).sum(1).tolist() == [1, 1]  # never empties a clip
    assert RandomMasking(count=20).select_among(keep).flatten(1).sum(1).tolist() == [20, 16]


def test_bad_parameters_name_the_parameter():
    for kw, name in [({"keep": 0.0}, "keep"), ({"keep": 1.5}, "keep"), ({"count": 0}, "count"),
                     ({"match_rlt": -0.1}, "match_rlt"), ({"match_rlt": "0.1"}, "match_rlt"),
                     ({"match_rlt": 0.1, "count": 5}, "match_rlt"), ({"seed": 1.5}, "seed"),
                     ({"tubelet": 2}, "tubelet")]:
        with pytest.raises(ReducerParamError, match=name):
            get_reducer("random", **kw)


def test_conformance():
    check_reducer(RandomMasking(keep=0.4, seed=1))
    calibrated = RandomMasking(match_rlt=0.1)
    calibrated.calibrate([_half()])
    assert calibrated.keep == pytest.approx(9 / 16)
    check_reducer(calibrated)
