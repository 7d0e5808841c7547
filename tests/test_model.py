"""The packed video ViT: geometry, packing, the dense fast path (checkpoints: test_checkpoint.py)."""
from __future__ import annotations

import pytest
import torch
from conftest import noise_video, seeded_model

from tokenbench.harness.model import MODEL_SIZES, build_model
from tokenbench.reducers import Selection, get_reducer


@pytest.fixture(scope="module")
def tiny():
    return seeded_model("vit_t", 7, num_frames=8, img_size=64)



@pytest.mark.parametrize("name,dims", [("vit_s", (384, 12, 6, 1536)), ("vit_b", (768, 12, 12, 3072)),
                                       ("vit_l", (1024, 24, 16, 4096)), ("vit_h", (1280, 32, 16, 5120)),
                                       ("vit_g", (1408, 40, 16, 6144))])  # VideoMAE-2 giant: MLP 48/11 × width
def test_videomae_dimensions(name, dims):
    assert MODEL_SIZES[name] == dims
    with torch.device("meta"):
        m = build_model(name, num_classes=400)
    assert (m.embed_dim, m.depth, m.heads, m.blocks[0].mlp.fc1.out_features) == dims
    assert m.grid == (8, 14, 14) and m.num_tokens == 1568
    assert m.patch_embed.proj.weight.shape == (dims[0], 3, 2, 16, 16)


def test_state_dict_has_videomae_layout(tiny):
    keys = set(tiny.state_dict())
    for k in ("patch_embed.proj.weight", "patch_embed.proj.bias", "blocks.0.norm1.weight",
              "blocks.0.attn.qkv.weight", "blocks.0.attn.q_bias", "blocks.0.attn.v_bias",
              "blocks.0.attn.proj.weight", "blocks.0.norm2.bias", "blocks.0.mlp.fc1.weight",
              "blocks.11.mlp.fc2.bias", "fc_norm.weight", "head.weight", "head.bias"):
        assert k in keys, k
    assert "blocks.0.attn.qkv.bias" not in keys  # VideoMAE keeps q/v biases apart, k has none
    assert "pos_embed" not in keys  # fixed sin-cos table, not a weight


def test_embedding_equals_conv3d(tiny):
    v = noise_video(3, 8, 64)
    ref = tiny.patch_embed.proj(v).flatten(2).transpose(1, 2)
    got = tiny.patch_embed(tiny.patch_embed.tubelets(v))
    assert torch.allclose(got, ref, atol=1e-5)


def test_dense_fast_path_gives_same_logits(tiny):
    v = noise_video(3, 8, 64)
    with torch.no_grad():
        dense = tiny(v)
        tiny.dense_fast_path = False
        loop = tiny(v)
        tiny.dense_fast_path = True
    assert torch.allclose(dense, loop, atol=1e-5)


def test_packed_batch_equals_clips_run_alone(tiny):
    """A clip's logits do not depend on which clips share its packed batch."""
    v = noise_video(3, 8, 64)
    keep = torch.zeros(3, *tiny.grid, dtype=torch.bool)
    keep[0] = True
    keep[1, :2] = True
    keep[2, :, :2] = True
    sel = Selection(keep=keep, lengths=keep.long())
    with torch.no_grad():
        together = tiny(v, selection=sel)
        alone = torch.cat([tiny(v[i:i + 1], selection=Selection(keep[i:i + 1], keep[i:i + 1].long()))
                           for i in range(3)])
    assert tiny.last_stats.tokens_in == [32]
    assert torch.allclose(together, alone, atol=1e-5)


def test_token_counts_recorded(tiny):
    with torch.no_grad():
        tiny(noise_video(2, 8, 64), get_reducer("random", count=10, seed=1))
    st = tiny.last_stats
    assert st.tokens_in == [10, 10]
    assert st.tokens_per_layer == [[10, 10]] * tiny.depth
    assert st.backend == "sdpa"


def test_kept_tokens_keep_their_own_position(tiny):
    keep = torch.zeros(1, *tiny.grid, dtype=torch.bool)
    keep[0, 2, 1, 3] = True
    keep[0, 3, 0, 0] = True
    tok = tiny.embed(noise_video(1, 8, 64), Selection(keep, keep.long()))
    h, w = tiny.grid[1:]
    assert tok.pos.tolist() == [2 * h * w + 1 * w + 3, 3 * h * w]
    assert tok.cu_seqlens.tolist() == [0, 2] and tok.cu_seqlens.dtype == torch.int32


def test_wrong_input_shape_is_a_clear_error(tiny):
    with pytest.raises(ValueError, match=r"built for \[B,3,8,64,64\]"):
        tiny(torch.zeros(1, 3, 16, 64, 64))


def test_unknown_model_lists_choices():
    with pytest.raises(ValueError, match="vit_t, vit_s, vit_b, vit_l, vit_h, vit_g"):
        build_model("vit_q", 10)


def test_length_embedding_is_used_when_enabled():
    torch.manual_seed(0)
    m = build_model("vit_t", 5, num_frames=8, img_size=64, length_embedding=True).eval()
    assert m.length_embed.shape == (4, 192)
    keep = torch.ones(1, *m.grid, dtype=torch.bool)
    v = noise_video(1, 8, 64)
    with torch.no_grad():
        a = m(v, selection=Selection(keep, keep.long()))
        b = m(v, selection=Selection(keep, keep.long() * 2))
    assert not torch.allclose(a, b)


def test_layer_norm_eps_is_the_models_and_can_be_set():
    m = build_model("vit_t", 5, num_frames=8, img_size=64)
    assert m.norm_eps == (1e-6, 1e-6)  # the original VideoMAE's
    m.set_norm_eps(1e-12, 1e-5)  # transformers'
    assert m.norm_eps == (1e-12, 1e-5)
    assert {b.norm1.eps for b in m.blocks} | {b.norm2.eps for b in m.blocks} == {1e-12}


# --- the embedding under an input-stage selection ---------------------------------------------------------

@pytest.fixture(scope="module")
def real_clips():
    from tokenbench.datasets import get_dataset, load_clips, to_model_input

    ds = get_dataset("samples", num_frames=16, img_size=112, windows=1)
    return to_model_input(load_clips(ds, 4).clips).contiguous()  # the four bundled videos, one clip each


def test_embed_under_rlt_equals_embedding_everything_then_gathering(real_clips):
    torch.manual_seed(0)
    m = build_model("vit_t", num_classes=3, num_frames=16, img_size=112, length_embedding=True)
    sel = get_reducer("rlt", threshold=0.1).select(real_clips)
    keep = sel.keep.flatten(1)
    kept = keep.sum(1).tolist()
    assert 0 < sum(kept) < keep.numel() and len(set(kept)) > 1  # real content: unequal, partial keep
    # reference: every tubelet embedded (the Conv3d of the state_dict), then the kept rows gathered
    ref_all = m.patch_embed.proj(real_clips).flatten(2).transpose(1, 2)  # [B, N, D]
    n = m.num_tokens
    idx = keep.reshape(-1).nonzero().squeeze(1)
    ref = ref_all.reshape(-1, m.embed_dim).index_select(0, idx) + m.pos_embed.index_select(0, idx % n)
    ref = ref + m.length_embed.index_select(0, sel.lengths.reshape(-1).index_select(0, idx) - 1)
    tok = m.embed(real_clips, sel)
    torch.testing.assert_close(tok.x, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(tok.pos, idx % n)
    assert torch.diff(tok.cu_seqlens).tolist() == kept and tok.lens == tuple(kept)
    # gradients reach the projection (and the length embedding) as through the full embedding
    w = torch.randn(tok.x.shape, generator=torch.Generator().manual_seed(1))
    (tok.x * w).sum().backward()
    got = [p.grad.clone() for p in (m.patch_embed.proj.weight, m.patch_embed.proj.bias, m.length_embed)]
    m.zero_grad()
    (ref * w).sum().backward()
    want = [m.patch_embed.proj.weight.grad, m.patch_embed.proj.bias.grad, m.length_embed.grad]
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)


def test_kept_tubelets_match_the_full_cut_on_strided_clips(tiny):
    # a non-contiguous clip (a strided view) gives the same tokens as its contiguous copy
    v = noise_video(2, 8, 64).transpose(3, 4)
    keep = torch.zeros(2, *tiny.grid, dtype=torch.bool)
    keep[0, 1, 2, 3] = keep[1, 0, 0, 0] = keep[1, 3, 1, 2] = True
    sel = Selection(keep, keep.long())
    a, b = tiny.embed(v, sel), tiny.embed(v.contiguous(), sel)
    assert torch.equal(a.x, b.x) and a.lens == (1, 2)
    flat = tiny.patch_embed.tubelets(v.contiguous())
    idx = keep.reshape(-1).nonzero().squeeze(1)
    assert torch.equal(tiny.patch_embed.kept_tubelets(v, keep.nonzero(as_tuple=True)),
                       flat.reshape(-1, flat.shape[-1]).index_select(0, idx))
