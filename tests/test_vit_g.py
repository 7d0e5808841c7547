"""vit_g, VideoMAE-2's giant (width 1408, depth 40, 16 heads, MLP 6144 = 48/11 × width), at 16×224².

tokenbench's tubelet is 2×16×16, so its vit_g sees 1,568 tokens; VideoMAE-2's giant uses 14-pixel patches
(2,048 tokens at 224²), and its checkpoints do not fit this backbone (the patch embedding's shape differs).
"""
from __future__ import annotations

import pytest
import torch

from tokenbench.harness.flops import analytic_flops, count_flops
from tokenbench.harness.model import MODEL_SIZES, build_model

DIM, DEPTH, HEADS, MLP = 1408, 40, 16, 6144
TOKENS = 1568


def _closed_form_gflops(n: int, classes: int = 400) -> float:
    """Multiply-adds of one 16×224² view, written out: tubelet embedding, per block q/k/v/proj (4·d²) and
    MLP (2·d·mlp) per token plus QKᵀ and AV (2·n²·d), LayerNorms (norm1, norm2: 5·d per token, fvcore's
    count), fc_norm and head."""
    embed = n * 3 * 2 * 16 * 16 * DIM
    blocks = DEPTH * (n * (4 * DIM * DIM + 2 * DIM * MLP) + 2 * n * n * DIM + 2 * 5 * n * DIM)
    return (embed + blocks + 5 * DIM + DIM * classes) / 1e9


def test_vit_g_is_videomae2_giant():
    assert MODEL_SIZES["vit_g"] == (DIM, DEPTH, HEADS, MLP)
    with torch.device("meta"):
        m = build_model("vit_g", 400)
    assert m.num_tokens == TOKENS and m.blocks[0].mlp.fc1.out_features == MLP
    assert sum(p.numel() for p in m.parameters()) == pytest.approx(1.013e9, rel=2e-3)  # VideoMAE-2: ~1B


def test_vit_g_analytic_gflops_at_16x224():
    with torch.device("meta"):
        m = build_model("vit_g", 400)
    a = analytic_flops(m, [TOKENS], [[TOKENS]] * DEPTH)
    assert a.mean == pytest.approx(_closed_form_gflops(TOKENS), rel=1e-3)
    assert a.mean == pytest.approx(1864, abs=1)  # docs/datasets.md "Model sizes" quotes it


@pytest.mark.slow  # a 1B-parameter model traced at 1,568 tokens: several minutes and ~5 GB on a 2-core CPU
def test_vit_g_fvcore_equals_the_analytic_count():
    torch.manual_seed(0)
    m = build_model("vit_g", 400).eval()
    r = count_flops(m, torch.randn(1, 3, 16, 224, 224, generator=torch.Generator().manual_seed(0)))
    assert r.tokens_in == [TOKENS]
    assert r.analytic.mean == pytest.approx(r.gflops, rel=1e-9)
    assert r.gflops == pytest.approx(_closed_form_gflops(TOKENS), rel=1e-3)
