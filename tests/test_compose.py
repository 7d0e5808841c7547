"""RLT followed by random masking (reducers/compose.py, reducer ``rlt_random``)."""
from __future__ import annotations

import pytest
import torch

from tokenbench.reducers import ReducerParamError, get_reducer
from tokenbench.reducers.compose import RLTRandom
from tokenbench.reducers.rlt import RLT
from tokenbench.reducers.testing import check_reducer


def _video(b=3, s=64, seed=0):
    """Clips with a static part and a changing part of different sizes, so RLT keeps unequal counts."""
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(b, 3, 1, s, s, generator=g).expand(b, 3, 16, s, s).contiguous()
    for i in range(b):
        img[i, :, :, :, : 16 * (i + 1)] += (0.5 * torch.arange(16.0)).view(1, 16, 1, 1)
    return img


def test_masks_a_fraction_of_rlt_tokens_and_keeps_their_run_lengths():
    v = _video()
    rlt = RLT(threshold=0.1).select(v)
    sel = RLTRandom(threshold=0.1, keep=0.5, seed=0).select(v)
    n_rlt = rlt.keep.flatten(1).sum(1).tolist()
    assert n_rlt == [16 + 7 * 4, 16 + 7 * 8, 16 + 7 * 12]
    assert bool((sel.keep <= rlt.keep).all()), "random masking only removes RLT tokens"
    assert sel.keep.flatten(1).sum(1).tolist() == [round(0.5 * n) for n in n_rlt]
    assert torch.equal(sel.lengths, rlt.lengths * sel.keep)  # survivors keep RLT's run length
    assert bool((sel.lengths[sel.keep] > 0).all())


def test_seeded_and_deterministic():
    v = _video()
    a = RLTRandom(seed=4).select(v).keep
    assert torch.equal(a, RLTRandom(seed=4).select(v).keep)
    assert not torch.equal(a, RLTRandom(seed=5).select(v).keep)


def test_keep_one_is_plain_rlt_and_for_eval_drops_the_random_stage():
    v = _video()
    red = RLTRandom(threshold=0.2, keep=1.0, length_embedding=True)
    plain = RLT(threshold=0.2).select(v)
    sel = red.select(v)
    assert torch.equal(sel.keep, plain.keep) and torch.equal(sel.lengths, plain.lengths)
    ev = RLTRandom(threshold=0.2, keep=0.3, length_embedding=True).for_eval()
    assert isinstance(ev, RLT) and ev.params() == {"threshold": 0.2,
                                                  "length_embedding": True}


def test_bad_parameters_name_the_parameter():
    with pytest.raises(ReducerParamError, match="rlt_random: threshold"):
        get_reducer("rlt_random", threshold=-1.0)
    with pytest.raises(ReducerParamError, match="rlt_random: keep"):
        get_reducer("rlt_random", keep=0.0)
    with pytest.raises(ReducerParamError, match="rlt_random: seed"):
        get_reducer("rlt_random", seed="x")


def test_conformance():
    report = check_reducer(RLTRandom(threshold=0.1, keep=0.6), video=_video())
    assert "select" in report.checks
