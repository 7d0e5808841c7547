"""The packed video ViT backbone (docs/architecture.md §2), VideoMAE layout.

* Tubelet embedding 2×16×16 (a Conv3d in the ``state_dict``; applied as a linear map to the kept
  tubelets only, so dropped tubelets cost nothing);
* a fixed 1-D sin-cos position table over the T'·H'·W' grid, each kept token taking its own slot's row;
* optional learned run-length embedding (RLT; T' rows indexed by run length − 1, added after the
  position embedding);
* pre-norm blocks with q/v-bias attention over each packed sequence, MLP ratio 4, GELU;
* no class token; per-clip mean pooling weighted by token ``size`` (a plain mean unless tokens were
  merged); ``fc_norm``; linear ``head``.

Its ``state_dict`` matches VideoMAE / VideoMAE-2 fine-tuned checkpoints, so
:func:`tokenbench.harness.checkpoint.load_checkpoint` reads real Kinetics / SSv2 checkpoints (that layout,
or transformers') from a local file. Nothing is ever downloaded.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from tokenbench.reducers.base import AttentionContext, Geometry, PackedTokens, Reducer, Selection, lengths
from tokenbench.reducers.none import NoReducer

from .attention import attention_call, choose_backend


class ModelSize(NamedTuple):
    dim: int
    depth: int
    heads: int
    mlp: int  # hidden width of each block's MLP


# S/B/L/H are VideoMAE's (MLP ratio 4); T is the DeiT-Tiny width; G is VideoMAE-2's giant (MLP ratio 48/11).
MODEL_SIZES: dict[str, ModelSize] = {
    "vit_t": ModelSize(192, 12, 3, 768),
    "vit_s": ModelSize(384, 12, 6, 1536),
    "vit_b": ModelSize(768, 12, 12, 3072),
    "vit_l": ModelSize(1024, 24, 16, 4096),
    "vit_h": ModelSize(1280, 32, 16, 5120),
    "vit_g": ModelSize(1408, 40, 16, 6144),
}
NORM_EPS = 1e-6  # the original VideoMAE's LayerNorm eps (blocks and fc_norm); transformers' differ
TUBELET = 2
PATCH = 16
BASELINE = NoReducer()  # the reducer of a forward pass given none: keeps every token


def sincos_table(n_position: int, dim: int) -> Tensor:
    """VideoMAE's fixed 1-D sinusoid table [n_position, dim] (even columns sin, odd columns cos)."""
    pos = torch.arange(n_position, dtype=torch.float64).unsqueeze(1)
    j = torch.arange(dim, dtype=torch.float64)
    angle = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)
    table = torch.empty(n_position, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.float()


@dataclass
class ForwardStats:
    """What the last forward pass did: recorded with results."""

    backend: str = ""
    attn_path: str = ""  # dense | packed | varlen ("+"-joined when layers differed): harness.attention.PATHS
    tokens_in: list[int] = field(default_factory=list)  # per clip, entering the first block
    # per clip, tubelets embedded (before reducer.before_position dropped any): the embedding's FLOPs follow
    # these; empty when forward_tokens ran alone (then tokens_in)
    tokens_embedded: list[int] = field(default_factory=list)
    tokens_per_layer: list[list[int]] = field(default_factory=list)  # [layer][clip], after each block
    tokens_mlp_per_layer: list[list[int]] = field(default_factory=list)  # [layer][clip], entering each MLP


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, cu_seqlens: Tensor, backend: str, bias: Tensor | None,
                dense: bool, lens: tuple[int, ...] | None = None) -> tuple[Tensor, Tensor, Tensor, tuple[str, str]]:
        """(output, queries, keys, (backend, path) that ran); q and k are views of one projection."""
        n, dim = x.shape
        qkv_bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, qkv_bias).view(n, 3, self.heads, self.head_dim)
        q, k, v = qkv.unbind(1)
        out, ran, path = attention_call(q, k, v, cu_seqlens, backend=backend, bias=bias, scale=self.scale,
                                        dense=dense, lens=lens)  # host lengths: no device read a layer
        return self.proj(out.reshape(n, dim)), q, k, (ran, path)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_hidden: int, drop_path: float = 0.0, eps: float = NORM_EPS):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, mlp_hidden)
        self.drop_path = drop_path

    def _drop(self, h: Tensor, tokens: PackedTokens) -> Tensor:
        """Stochastic depth per clip (training only)."""
        if not self.training or self.drop_path == 0.0:
            return h
        keep = torch.rand(tokens.batch_size, device=h.device) >= self.drop_path
        scale = keep.to(h.dtype) / (1.0 - self.drop_path)
        return h * scale[tokens.seq_ids()].unsqueeze(1)

    def forward(self, tokens: PackedTokens, reducer: Reducer, layer: int, depth: int,
                backend: str, prop_attn: bool, dense: bool,
                scored: bool = False) -> tuple[PackedTokens, tuple[str, str], Tensor]:
        """(tokens after the block, the attention (backend, path) that ran, ``cu_seqlens`` of the tokens entering the
        MLP — FLOP counting reads them). ``scored``: the reducer reads this block's attention context."""
        bias = tokens.weight.log() if prop_attn else None
        h, queries, keys, ran = self.attn(self.norm1(tokens.x), tokens.cu_seqlens, backend, bias, dense,
                                          tokens.lens)
        # the context is built only where a reducer asked for it; elsewhere the queries die here
        context = {"attn": AttentionContext(
            queries=queries, keys=keys, scale=self.attn.scale, cu_seqlens=tokens.cu_seqlens,
            lens=tuple(tokens.seqlens()), bias=bias if bias is not None else tokens.x.new_zeros(tokens.x.shape[0]),
        )} if scored else {}
        del queries
        tokens = tokens.replace(x=tokens.x + self._drop(h, tokens))
        reduced = reducer.after_attention(tokens, keys, layer, depth, **context)
        context.clear()
        if reduced is not tokens:
            # The keys belong to the tokens before after_attention merged or moved them; after_block
            # gets None rather than keys that no longer line up with its tokens.
            keys = None
        tokens = reduced
        mlp_cu = tokens.cu_seqlens
        tokens = tokens.replace(x=tokens.x + self._drop(self.mlp(self.norm2(tokens.x)), tokens))
        tokens = reducer.after_block(tokens, keys, layer, depth)
        return tokens, ran, mlp_cu


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, tubelet: int = TUBELET, patch: int = PATCH):
        super().__init__()
        self.tubelet, self.patch = tubelet, patch
        self.proj = nn.Conv3d(3, dim, kernel_size=(tubelet, patch, patch), stride=(tubelet, patch, patch))

    def tubelets(self, video: Tensor) -> Tensor:
        """[B,3,T,H,W] -> [B, T'·H'·W', 3·t·p·p] in (t, h, w) raster order, flattened like the conv weight."""
        b, c, t, h, w = video.shape
        tt, p = self.tubelet, self.patch
        x = video.reshape(b, c, t // tt, tt, h // p, p, w // p, p)
        x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)  # B, T', H', W', C, tt, p, p
        return x.reshape(b, (t // tt) * (h // p) * (w // p), c * tt * p * p)

    def kept_tubelets(self, video: Tensor, index: tuple[Tensor, Tensor, Tensor, Tensor]) -> Tensor:
        """The tubelets at (clip, t', h', w') = ``index`` of [B,3,T,H,W] → [K, 3·t·p·p], flattened like
        :meth:`tubelets`; gathered from a view, so only the K kept tubelets' pixels are copied."""
        b, c, t, h, w = video.shape
        tt, p = self.tubelet, self.patch
        view = video.reshape(b, c, t // tt, tt, h // p, p, w // p, p).permute(0, 2, 4, 6, 1, 3, 5, 7)
        return view[index].reshape(index[0].numel(), c * tt * p * p)

    def forward(self, flat_tubelets: Tensor) -> Tensor:
        weight = self.proj.weight.reshape(self.proj.out_channels, -1)
        return F.linear(flat_tubelets, weight, self.proj.bias)


class VideoViT(nn.Module):
    """Packed video ViT. ``forward(video, reducer=BASELINE)`` → logits [B, num_classes]."""

    def __init__(self, name: str, num_classes: int, num_frames: int = 16, img_size: int = 224,
                 length_embedding: bool = False, drop_path_rate: float = 0.0, head_dropout: float = 0.0,
                 attn_backend: str = "auto", dense_fast_path: bool = True, norm_eps: float = NORM_EPS,
                 fc_norm_eps: float = NORM_EPS):
        super().__init__()
        if name not in MODEL_SIZES:
            raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODEL_SIZES)}")
        if num_frames % TUBELET or img_size % PATCH:
            raise ValueError(f"num_frames must be a multiple of {TUBELET} and img_size of {PATCH}, "
                             f"got {num_frames} and {img_size}")
        dim, depth, heads, mlp = MODEL_SIZES[name]
        self.name, self.num_classes = name, num_classes
        self.num_frames, self.img_size = num_frames, img_size
        self.embed_dim, self.depth, self.heads = dim, depth, heads
        self.geometry = Geometry(TUBELET, PATCH)  # told to every input-stage reducer
        self.grid = (num_frames // TUBELET, img_size // PATCH, img_size // PATCH)
        n_tok = math.prod(self.grid)
        self.patch_embed = PatchEmbed(dim)
        self.register_buffer("pos_embed", sincos_table(n_tok, dim), persistent=False)
        self.length_embed = nn.Parameter(torch.randn(self.grid[0], dim) * 0.02) if length_embedding else None
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(Block(dim, heads, mlp, drop_path=dpr[i], eps=norm_eps)
                                    for i in range(depth))
        self.fc_norm = nn.LayerNorm(dim, eps=fc_norm_eps)
        self.head_dropout = nn.Dropout(head_dropout)
        self.head = nn.Linear(dim, num_classes)
        self.attn_backend = attn_backend
        self.dense_fast_path = dense_fast_path
        self.last_stats = ForwardStats()
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.head.weight, std=0.02)

    def set_norm_eps(self, blocks: float, fc_norm: float) -> None:
        """The LayerNorm eps a checkpoint was trained with (transformers' VideoMAE: 1e-12 and 1e-5)."""
        for blk in self.blocks:
            blk.norm1.eps = blk.norm2.eps = blocks
        self.fc_norm.eps = fc_norm

    @property
    def norm_eps(self) -> tuple[float, float]:
        """(blocks, fc_norm) LayerNorm eps."""
        return self.blocks[0].norm1.eps if len(self.blocks) else NORM_EPS, self.fc_norm.eps

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid)

    def backend_for(self, x: Tensor) -> str:
        return choose_backend(x.device, x.dtype, self.attn_backend)

    # --- stages ---------------------------------------------------------------------------------
    def embed(self, video: Tensor, selection: Selection | None = None,
              reducer: Reducer = BASELINE) -> PackedTokens:
        """Tubelet-embed the kept tubelets of ``video`` and pack them: PackedTokens. ``reducer.before_position``
        sees the embeddings before the position embedding is added."""
        return self.add_position(reducer.before_position(self.embed_tubelets(video, selection)))

    def add_position(self, tokens: PackedTokens) -> PackedTokens:
        """Each token's row of the position table added at its ``pos``."""
        return tokens.replace(x=tokens.x + self.pos_embed.to(tokens.x.dtype).index_select(0, tokens.pos))

    def embed_tubelets(self, video: Tensor, selection: Selection | None = None) -> PackedTokens:
        """The kept tubelets of ``video``, embedded (and their run-length embedding, when the model has one),
        packed, without the position embedding."""
        b, c, t, h, w = video.shape
        if c != 3 or (t, h, w) != (self.num_frames, self.img_size, self.img_size):
            raise ValueError(f"{self.name} was built for [B,3,{self.num_frames},{self.img_size},{self.img_size}] "
                             f"clips, got {list(video.shape)}")
        n = self.num_tokens
        if selection is None:
            x = self.patch_embed(self.patch_embed.tubelets(video).reshape(b * n, -1))
            pos = torch.arange(n, device=video.device).repeat(b)
            counts = torch.full((b,), n, dtype=torch.int32, device=video.device)
            lens = (n,) * b
            lengths = None
        else:
            keep = selection.keep
            if tuple(keep.shape) != (b, *self.grid):
                raise ValueError(f"selection.keep has shape {tuple(keep.shape)}, expected {(b, *self.grid)}")
            keep = keep.to(video.device)
            counts = keep.flatten(1).sum(1).to(torch.int32)
            lens = tuple(counts.tolist())  # the one device read: a content-adaptive batch's size
            if 0 in lens:
                raise ValueError("a reducer kept no token of a clip; every clip needs at least one token")
            ib, it, ih, iw = keep.nonzero(as_tuple=True)  # clip-major, raster order within a clip
            # Cut only the kept tubelets, straight from a strided view of the clip (no copy of the dropped
            # ones), and project them: the embedding costs in proportion to the kept tokens.
            x = self.patch_embed(self.patch_embed.kept_tubelets(video, (ib, it, ih, iw)))
            _, gh, gw = self.grid
            pos = (it * gh + ih) * gw + iw
            lengths = selection.lengths.to(video.device)[ib, it, ih, iw]
        if self.length_embed is not None:  # added before before_position (the sum commutes), lined up with pos
            if lengths is None:  # no selection: every run has length 1
                lengths = torch.ones_like(pos)
            x = x + self.length_embed.to(x.dtype).index_select(0, (lengths - 1).clamp(0, self.grid[0] - 1))
        cu = F.pad(torch.cumsum(counts, 0, dtype=torch.int32), (1, 0))
        size = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
        return PackedTokens(x=x, cu_seqlens=cu, pos=pos, size=size, grid=self.grid, lens=lens)

    def pool(self, tokens: PackedTokens) -> Tensor:
        """Per-clip mean, weighted by ``weight`` (``size`` unless a reducer weighs otherwise) → [B, D]."""
        ids = tokens.seq_ids()
        w = tokens.weight.to(tokens.x.dtype).unsqueeze(1)
        b = tokens.batch_size
        num = tokens.x.new_zeros(b, tokens.x.shape[1]).index_add_(0, ids, tokens.x * w)
        den = tokens.x.new_zeros(b, 1).index_add_(0, ids, w)
        return num / den

    def forward_tokens(self, tokens: PackedTokens, reducer: Reducer = BASELINE) -> PackedTokens:
        backend = self.backend_for(tokens.x)
        prop_attn = bool(reducer.prop_attn)
        stats = ForwardStats(tokens_in=tokens.seqlens())
        ran, paths = set(), set()
        counts = stats.tokens_in
        scored = reducer.attention_layers(self.depth)
        for i, blk in enumerate(self.blocks):
            cu_before = tokens.cu_seqlens
            tokens, used, mlp_cu = blk(tokens, reducer, i, self.depth, backend, prop_attn, self.dense_fast_path,
                                       scored=i in scored)
            ran.add(used[0])
            paths.add(used[1])
            # counts are read back (a host sync) only where a reducer changed them
            mlp = list(counts) if mlp_cu is cu_before else lengths(mlp_cu.tolist())
            counts = list(mlp) if tokens.cu_seqlens is mlp_cu else tokens.seqlens()
            stats.tokens_mlp_per_layer.append(mlp)
            stats.tokens_per_layer.append(counts)
        stats.backend = "+".join(sorted(ran)) if ran else backend
        stats.attn_path = "+".join(sorted(paths))
        self.last_stats = stats
        return tokens

    def forward(self, video: Tensor, reducer: Reducer = BASELINE,
                selection: Selection | None = None) -> Tensor:
        """video [B,3,T,H,W], ImageNet-normalised → logits [B, num_classes].

        ``reducer.select`` runs here (its cost is part of inference); pass ``selection`` to use a
        precomputed one instead.
        """
        reducer.check_geometry(self.grid, self.depth)
        if selection is None:
            selection = reducer.select(video, self.geometry)
        embedded = self.embed_tubelets(video, selection)
        tokens = self.forward_tokens(self.add_position(reducer.before_position(embedded)), reducer)
        self.last_stats.tokens_embedded = embedded.seqlens()
        return self.head(self.head_dropout(self.fc_norm(self.pool(tokens))))


def build_model(name: str, num_classes: int, num_frames: int = 16, img_size: int = 224, **kwargs) -> VideoViT:
    """A VideoMAE-layout video ViT: ``vit_t``, ``vit_s``, ``vit_b``, ``vit_l``, ``vit_h`` or ``vit_g``."""
    return VideoViT(name, num_classes, num_frames=num_frames, img_size=img_size, **kwargs)

