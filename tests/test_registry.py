"""Registry: names, parameters and their errors, entry-point registration of the built-ins."""
from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field

import pytest
import torch

from tokenbench.reducers import (
    Reducer,
    ReducerParamError,
    UnknownReducerError,
    available_reducers,
    get_reducer,
    reducer_params,
    register_reducer,
)
from tokenbench.reducers.testing import check_reducer


def test_builtins_come_through_the_entry_point_group():
    eps = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="tokenbench.reducers")}
    assert eps["none"] == "tokenbench.reducers.none:NoReducer"
    assert eps["random"] == "tokenbench.reducers.random:RandomMasking"
    assert {"none", "random"} <= set(available_reducers())


def test_unknown_name_lists_valid_names():
    with pytest.raises(UnknownReducerError) as e:
        get_reducer("nope")
    msg = str(e.value)
    assert "unknown reducer 'nope'" in msg
    for name in available_reducers():
        assert name in msg


@pytest.mark.parametrize("params,pattern", [
    ({"keep": 1.5}, r"keep must be a fraction in \(0, 1\], got 1.5"),
    ({"keep": 0.0}, r"keep must be a fraction in \(0, 1\]"),
    ({"count": -3}, r"count must be a positive integer"),
    ({"kep": 0.3}, r"no parameter 'kep'; valid parameters: keep=None, count=None, seed=0"),
])
def test_bad_parameters_fail_at_once_naming_the_range(params, pattern):
    with pytest.raises(ReducerParamError, match=pattern):
        get_reducer("random", **params)


def test_params_listed_with_defaults_and_help():
    info = {p.name: p for p in reducer_params("random")}
    assert info["keep"].default is None and "fraction" in info["keep"].help and "0.5 unless" in info["keep"].help
    assert info["seed"].default == 0


def test_random_masking_keeps_the_asked_share_and_is_seeded():
    video = torch.randn(4, 3, 16, 64, 64)
    a = get_reducer("random", keep=0.25, seed=7).select(video)
    b = get_reducer("random", keep=0.25, seed=7).select(video)
    c = get_reducer("random", keep=0.25, seed=8).select(video)
    assert a.keep.shape == (4, 8, 4, 4)
    assert a.keep.flatten(1).sum(1).tolist() == [32] * 4
    assert torch.equal(a.keep, b.keep) and not torch.equal(a.keep, c.keep)
    assert not torch.equal(a.keep[0], a.keep[1])  # each clip draws its own mask
    exact = get_reducer("random", count=5).select(video)
    assert exact.keep.flatten(1).sum(1).tolist() == [5] * 4
    with pytest.raises(ReducerParamError, match="count=200 exceeds the 128 tubelets"):
        get_reducer("random", count=200).select(video)


def test_runtime_registration_and_conformance_of_a_merging_reducer():
    @register_reducer("test-pairmerge")
    @dataclass(repr=False)
    class PairMerge(Reducer):
        """Merges the first two tokens of every clip after block `at` (a toy in-block reducer)."""

        at: int = field(default=0, metadata={"help": "block after which to merge"})

        def after_block(self, tokens, keys, layer, depth):
            if layer != self.at:
                return tokens
            cu = tokens.cu_seqlens.tolist()
            xs, ps, ss = [], [], []
            for a, b in zip(cu[:-1], cu[1:]):
                x, p, s = tokens.x[a:b], tokens.pos[a:b], tokens.size[a:b]
                if b - a >= 2:
                    w = s[:2].unsqueeze(1)
                    merged = (x[:2] * w).sum(0, keepdim=True) / w.sum()
                    x, p, s = torch.cat([merged, x[2:]]), p[1:], torch.cat([s[:2].sum(0, keepdim=True), s[2:]])
                xs.append(x)
                ps.append(p)
                ss.append(s)
            lens = torch.tensor([len(p) for p in ps])
            new_cu = torch.nn.functional.pad(lens.cumsum(0), (1, 0)).to(torch.int32)
            return tokens.replace(x=torch.cat(xs), pos=torch.cat(ps), size=torch.cat(ss), cu_seqlens=new_cu)

    assert "test-pairmerge" in available_reducers()
    rep = check_reducer(get_reducer("test-pairmerge", at=1))
    assert [a - b for a, b in zip(rep.tokens_in, rep.tokens_out)] == [1, 1, 1]


def test_conformance_helper_catches_a_reducer_that_loses_tokens():
    @dataclass(repr=False)
    class Leaky(Reducer):
        def after_block(self, tokens, keys, layer, depth):
            n = tokens.x.shape[0] - 1  # silently drops the last token of the batch, size included
            cu = tokens.cu_seqlens.clone()
            cu[-1] -= 1
            return tokens.replace(x=tokens.x[:n], pos=tokens.pos[:n], size=tokens.size[:n], cu_seqlens=cu)

    with pytest.raises(AssertionError, match="sizes per clip sum to"):
        check_reducer(Leaky())
