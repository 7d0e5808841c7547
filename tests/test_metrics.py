"""Accuracy under the multi-view protocol; token-count summaries."""
from __future__ import annotations

import pytest
import torch

from tokenbench.harness.metrics import (
    MultiViewAccuracy,
    TokenCounts,
    multiview_accuracy,
    token_summary,
    topk_correct,
    views_protocol,
)
from tokenbench.harness.model import build_model
from tokenbench.harness.schema import METRICS
from tokenbench.reducers import get_reducer


def test_softmax_is_averaged_over_views_not_logits():
    # video 0: averaging logits would say class 0, averaging probabilities says class 1 (the label)
    logits = torch.tensor([[0.0, 5.0, 0.0], [3.0, -10.0, 0.0],
                           [0.0, 1.0, 4.0], [0.0, 1.0, 4.0]])  # video 1: class 2, then 1, then 0
    r = multiview_accuracy(logits, [1, 1, 0, 0], [0, 0, 1, 1], ks=(1, 2), protocol="2x1")
    assert logits[:2].mean(0).argmax() == 0
    assert r == {"top1": 50.0, "top2": 50.0, "num_clips": 2, "views": "2x1"}


def test_views_may_arrive_in_different_batches():
    acc = MultiViewAccuracy(protocol=views_protocol(1, 2))
    acc.add(torch.tensor([[0.0, 5.0, 0.0]]), torch.tensor([1]), torch.tensor([7]))
    acc.add(torch.tensor([[0.0, 0.0, 9.0], [3.0, -10.0, 0.0]]), [2, 1], ["x", 7])
    acc.add(torch.tensor([[0.0, 0.0, 9.0]]), [2], ["x"])
    assert len(acc) == 2
    assert acc.predictions() == {7: 1, "x": 2}
    r = acc.result()
    assert r["top1"] == 100.0 and r["top5"] == 100.0 and r["views"] == "1x2"


def test_shards_merged_equal_one_accumulator_of_every_view():
    """What evaluate does across ranks: a video's views split over two shards count as one video."""
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(12, 6, generator=g), torch.arange(12) // 3 % 6
    ids = (torch.arange(12) // 3).tolist()
    whole = MultiViewAccuracy()
    whole.add(logits, labels, ids)
    a, b = MultiViewAccuracy(), MultiViewAccuracy()
    a.add(logits[::2], labels[::2], ids[::2])
    b.add(logits[1::2], labels[1::2], ids[1::2])
    a.merge(b)
    assert len(a) == 4 and a.result() == whole.result() and a.predictions() == whole.predictions()
    other = MultiViewAccuracy()
    other.add(logits[:1], [5], [0])
    with pytest.raises(ValueError, match="labelled"):
        a.merge(other)


def test_top5_with_fewer_classes_and_topk():
    scores = torch.tensor([[0.1, 0.2, 0.7], [0.5, 0.4, 0.1]])
    assert topk_correct(scores, torch.tensor([2, 1]), 1).tolist() == [True, False]
    assert topk_correct(scores, torch.tensor([2, 1]), 5).tolist() == [True, True]


def test_protocol_and_label_consistency_are_checked():
    acc = MultiViewAccuracy(protocol="2x3")
    acc.add(torch.zeros(5, 4), [0] * 5, [0] * 5)
    with pytest.raises(ValueError, match="expects 6 views"):
        acc.result()
    with pytest.raises(ValueError, match="labelled"):
        multiview_accuracy(torch.zeros(2, 4), [0, 1], [3, 3])
    with pytest.raises(ValueError):
        views_protocol(0, 1)
    with pytest.raises(ValueError, match="no views"):
        MultiViewAccuracy().result()


def test_token_counts_from_real_forward_passes():
    torch.manual_seed(0)
    model = build_model("vit_t", 5, num_frames=4, img_size=32).eval()  # 8 tokens per clip
    counts = TokenCounts(tokens_total=model.num_tokens)
    video = torch.randn(2, 3, 4, 32, 32)
    with torch.inference_mode():
        model(video, get_reducer("random", count=3))
        counts.add(model.last_stats)
        model(video[:1])
        counts.add(model.last_stats)
    s = counts.summary()
    assert set(s) <= set(METRICS)
    assert s["tokens_per_clip"] == [3, 3, 8]
    assert (s["tokens_in_mean"], s["tokens_in_min"], s["tokens_in_max"]) == (pytest.approx(14 / 3), 3, 8)
    assert s["tokens_total"] == 8
    assert s["tokens_per_layer"] == [pytest.approx(14 / 3)] * 12


def test_token_summary_per_layer_means():
    s = token_summary([10, 20], [[8, 16], [4, 8]], 32)
    assert s["tokens_per_layer"] == [12.0, 6.0] and s["tokens_in_mean"] == 15.0
    with pytest.raises(ValueError):
        token_summary([])


def test_token_counts_keep_the_tokens_entering_each_mlp_apart_from_those_after_each_block():
    """STA prunes between a block's attention and its MLP: the MLP sees fewer tokens than attention did but as
    many as leave the block. The budget axis (tokens entering each MLP) must come from the MLP count."""
    torch.manual_seed(0)
    model = build_model("vit_t", 5, num_frames=8, img_size=64).eval()  # grid 4×4×4 = 64 tokens
    counts = TokenCounts(tokens_total=model.num_tokens)
    with torch.inference_mode():
        model(torch.randn(2, 3, 8, 64, 64), get_reducer("sta", r=4))
        counts.add(model.last_stats)
    s = counts.summary()
    mlp = [sum(layer) / 2 for layer in model.last_stats.tokens_mlp_per_layer]
    after = [sum(layer) / 2 for layer in model.last_stats.tokens_per_layer]
    assert s["tokens_mlp_per_layer"] == pytest.approx(mlp) and s["tokens_per_layer"] == pytest.approx(after)
    assert mlp != after and min(mlp) < 64  # STA pruned, and the two counts differ somewhere
    assert set(s) <= set(METRICS)
