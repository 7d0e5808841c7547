"""The reducer interface: the types every reducer and the backbone exchange (docs/architecture.md §3).

A reducer acts at up to three points of a forward pass:

* ``select(video, geometry)`` before the tubelet embedding (input-stage reducers: RLT, random masking,
  downsampling); ``geometry`` is the model's own :class:`Geometry` (frames and pixels per tubelet), so a
  reducer never restates it; returns a :class:`Selection` or ``None`` to keep every tubelet;
* ``after_attention(tokens, keys, layer, depth)`` inside each block, between attention and MLP
  (ToMe merges here);
* ``after_block(tokens, keys, layer, depth)`` after each whole block (STA prunes here);
* ``before_position(tokens)`` on the tubelet embeddings, before the position embedding is added
  (``feature_diff`` compares raw embeddings of one cell across time here).

A reducer that reads attention declares the blocks in :meth:`Reducer.attention_layers`; at those blocks
(and only there) ``after_attention`` also receives ``attn=`` an :class:`AttentionContext` (queries, keys,
scale, sequence offsets, the logits' bias), from which :mod:`tokenbench.reducers.attention_stats` computes
exact attention statistics in bounded memory while the block's own attention stays fused.

Parameters are dataclass fields with defaults; subclasses are ``@dataclass`` classes and check their
parameters in :meth:`Reducer.validate`, raising :class:`ReducerParamError` naming the parameter.
"""
from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, overload

import torch
from torch import Tensor


@overload
def lengths(cu_seqlens: Tensor) -> Tensor: ...
@overload
def lengths(cu_seqlens: Sequence[int]) -> list[int]: ...
def lengths(cu_seqlens):
    """Per-sequence lengths from packed offsets [B+1]: a long tensor on the offsets' device from a tensor (no
    device read), Python ints from a list."""
    if isinstance(cu_seqlens, Tensor):
        return torch.diff(cu_seqlens.long())
    return [b - a for a, b in zip(cu_seqlens[:-1], cu_seqlens[1:])]


@dataclass
class PackedTokens:
    """One batch of clips, packed: clip after clip in one stream, no padding."""

    x: Tensor  # [N_total, D] token features
    cu_seqlens: Tensor  # [B+1] int32 offsets of each clip's tokens in x
    pos: Tensor  # [N_total] long: index of the token's (first) tubelet in the T'·H'·W' grid
    size: Tensor  # [N_total] float: tokens merged into this one (1 when embedded); sums to the clip's tokens
    grid: tuple[int, int, int]  # (T', H', W') of the un-reduced clip
    # Host copy of the per-clip token counts, set by whoever built the batch and knows them (the embedding,
    # ToMe, STA), so that reducers size their outputs without reading cu_seqlens back from the device (a
    # host sync on a GPU). Optional; replace() drops it when cu_seqlens changes without a new one.
    lens: tuple[int, ...] | None = field(default=None, repr=False, compare=False)
    # [N_total] float: the weight a token has in size-weighted pooling and proportional attention. It is
    # ``size`` (the same tensor) unless a reducer's rule weighs tokens otherwise than by the tokens they
    # stand for (vid-TLDR: background sources merge with weight 0), so ``size`` stays an exact count for
    # FLOPs, budgets and conformance. Left out (``None``), it is ``size``; replace() with a new ``size`` and
    # no new ``weight`` makes it the new ``size`` again.
    weight: Tensor = field(default=None, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.weight is None:
            self.weight = self.size

    @property
    def batch_size(self) -> int:
        return int(self.cu_seqlens.numel()) - 1

    def seqlens(self) -> list[int]:
        """Per-clip token counts as Python ints (from ``lens`` when set: no device read)."""
        if self.lens is not None:
            return list(self.lens)
        return lengths(self.cu_seqlens.tolist())

    def seq_ids(self) -> Tensor:
        """[N_total] long: which clip each token belongs to."""
        lens = lengths(self.cu_seqlens)
        # output_size: the total is known on the host, so nothing is read back from the device
        return torch.repeat_interleave(torch.arange(len(lens), device=self.x.device), lens.to(self.x.device),
                                       output_size=self.x.shape[0])

    def replace(self, **changes: Any) -> PackedTokens:
        if "cu_seqlens" in changes and "lens" not in changes:
            changes["lens"] = None  # never carry counts that belong to the old cu_seqlens
        if "size" in changes and "weight" not in changes:
            changes["weight"] = changes["size"]  # a weight lined up with the old tokens is never carried
        return dataclasses.replace(self, **changes)


@dataclass
class Selection:
    """What an input-stage reducer keeps."""

    keep: Tensor  # [B, T', H', W'] bool
    lengths: Tensor  # [B, T', H', W'] long run lengths, 0 where dropped


@dataclass(frozen=True)
class Geometry:
    """How the model cuts a clip into tubelets: ``frames`` × ``pixels`` × ``pixels``. The model tells an
    input-stage reducer this with every ``select`` call, so the reducer selects on the grid the model embeds."""

    frames: int = 2
    pixels: int = 16

    def grid(self, video: Tensor) -> tuple[int, int, int]:
        """(T', H', W') of ``video`` [B,3,T,H,W]; raises a clear error when it does not tile."""
        return grid_of(video, self.frames, self.pixels)


# the VideoMAE tubelet (docs/architecture.md §2; harness.model's TUBELET and PATCH, which a test keeps equal to these)
VIDEOMAE = Geometry(2, 16)
BACKBONE_TUBELET = (VIDEOMAE.frames, VIDEOMAE.pixels)


@dataclass(frozen=True)
class AttentionContext:
    """What a block's attention saw, handed to ``after_attention`` at the blocks a reducer declares in
    :meth:`Reducer.attention_layers`. Views of the block's own q/k projection: building it copies nothing,
    and it is dropped when the hook returns."""

    queries: Tensor  # [N_total, heads, head_dim], before scaling
    keys: Tensor  # [N_total, heads, head_dim]
    scale: float  # the logits are scale · q·k + bias
    cu_seqlens: Tensor  # [B+1] int32, as the tokens entering the block
    lens: tuple[int, ...]  # per-sequence token counts (host)
    bias: Tensor  # [N_total] key-side additive bias on the logits (log weight under prop. attention; else 0)


class _NoAttention:
    """The context a hook gets where its reducer declared none: any use says what to declare."""

    def __getattr__(self, name: str):
        raise AttributeError(f"no attention context at this block (reading {name!r}): list the block in the "
                             "reducer's attention_layers(depth)")

    def __repr__(self) -> str:
        return "NO_ATTENTION"


NO_ATTENTION: AttentionContext = _NoAttention()  # type: ignore[assignment]


class ReducerParamError(ValueError):
    """A reducer parameter is out of range or of the wrong kind. The message names the parameter."""


class Reducer:
    """Base class of every token reducer. Subclasses are dataclasses whose fields are parameters.

    Capabilities are declared here with their defaults; a reducer overrides those that apply to it (as a
    class attribute, or as a dataclass field when it is a parameter). Nothing reads a reducer's name.

    * ``prop_attn``: the backbone adds ``log(size)`` to the attention logits (ToMe's proportional attention);
    * ``length_embedding``: the model needs a learned run-length embedding (RLT);
    * ``calibrates``: :meth:`calibrate` must see the cell's clips before any measured work (random masking
      matched to RLT's budget);
    * ``calibrates_with_model``: :meth:`calibrate_model` must run the model on clips of the dataset's
      *train* split before any measured work (threshold merging finds its per-layer thresholds); the runner
      never feeds it the clips it scores, and records what it returns with the cell;
    * ``train_only``: a training-time augmentation; a model trained with it is evaluated without it
      (:meth:`for_eval`);
    * :meth:`attention_layers`: the blocks whose attention context ``after_attention`` reads (none by
      default: the model then builds no context and keeps no query alive).
    * ``identity``: changes nothing (``none``, the baseline): a cell with it is its own baseline, the A/A
      control.
    """

    name: ClassVar[str] = ""
    identity: ClassVar[bool] = False
    prop_attn: bool = False
    length_embedding: bool = False
    calibrates: ClassVar[bool] = False
    calibrates_with_model: ClassVar[bool] = False
    calibration_clips: int = 64  # train clips and clips a batch :meth:`calibrate_model` asks the runner for
    calibration_batch: int = 8
    train_only: ClassVar[bool] = False

    def __post_init__(self) -> None:
        self.validate()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("select")
        if own is not None and _takes_video_only(own):
            # A plugin written before select() was told the geometry (``select(self, video)``, restating its
            # own tubelet): still called the one way the model calls every reducer.
            def select(self, video: Tensor, geometry: Geometry = VIDEOMAE, _own=own) -> Selection | None:
                return _own(self, video)

            select.__doc__ = own.__doc__
            cls.select = select

    def validate(self) -> None:
        """Raise :class:`ReducerParamError` naming the parameter when a value is invalid."""

    def check_geometry(self, grid: tuple[int, int, int], depth: int) -> None:
        """Raise :class:`ReducerParamError` when the parameters cannot work on clips of ``grid`` (T', H', W')
        in a model of ``depth`` blocks (e.g. ToMe's r above half the tokens, STA on an ungroupable T').
        Called by the model before a forward pass, by suite validation and by the runner before any work.

        This default checks ``tubelet`` / ``patch`` parameters, when a plugin restates them (built-ins are
        told the model's :class:`Geometry` instead), against the backbone's tubelet
        (:data:`BACKBONE_TUBELET`): a reducer that cuts the video into other tubelets selects on another
        grid than the model embeds."""
        frames, pixels = BACKBONE_TUBELET
        for param, fits in (("tubelet", frames), ("patch", pixels)):
            value = getattr(self, param, fits)
            if value != fits:
                raise ReducerParamError(
                    f"{self.name or type(self).__name__}: {param}={value!r} does not fit the model, whose "
                    f"tubelets are {frames} frames × {pixels}×{pixels} pixels (token grid {tuple(grid)}); "
                    f"use {param}={fits}")

    def geometry_note(self, grid: tuple[int, int, int]) -> str | None:
        """One line when clips of ``grid`` (T', H', W') run the reducer on a geometry its paper does not
        define (a generalisation), for reports to label such rows; ``None`` when the paper defines it."""
        return None

    def select(self, video: Tensor, geometry: Geometry = VIDEOMAE) -> Selection | None:
        """video [B,3,T,H,W], ImageNet-normalised, cut by the model into tubelets of ``geometry``
        (``geometry.grid(video)`` is the token grid). ``None`` keeps every tubelet."""
        return None

    def attention_layers(self, depth: int) -> frozenset[int]:
        """Blocks (of a model of ``depth``) at which ``after_attention`` needs ``attn=``, the block's
        :class:`AttentionContext`. Only there does the model build one; elsewhere the hook is called
        without it (so hooks written without the keyword keep working)."""
        return frozenset()

    def before_position(self, tokens: PackedTokens) -> PackedTokens:
        """The tubelet embeddings of the kept tubelets, before the position embedding is added (``x`` holds
        no position information yet; ``pos`` says where each token sits). Returns the tokens to embed."""
        return tokens

    def refine(self, earlier: Selection, video: Tensor, geometry: Geometry = VIDEOMAE) -> Selection:
        """What this input-stage reducer keeps when it runs after another one (a composition: RLT, then this)
        that kept ``earlier``. By default the tubelets both keep; survivors keep the run length the earlier
        stage gave them (the stretch of video a token stands for does not change when another is dropped).
        Random masking overrides it to mask *among* the earlier stage's tubelets."""
        own = self.select(video, geometry)
        if own is None:
            return earlier
        keep = earlier.keep & own.keep.to(earlier.keep.device)
        return Selection(keep=keep, lengths=earlier.lengths * keep)

    @property
    def acts_at_input(self) -> bool:
        """Whether the reducer selects tubelets before the embedding (overrides :meth:`select`)."""
        return type(self).select is not Reducer.select

    @property
    def acts_in_blocks(self) -> bool:
        """Whether the reducer changes tokens inside the network (overrides a block hook, or
        :meth:`before_position`)."""
        cls = type(self)
        return any(getattr(cls, hook) is not getattr(Reducer, hook)
                   for hook in ("after_attention", "after_block", "before_position"))

    def after_attention(self, tokens: PackedTokens, keys: Tensor, layer: int, depth: int,
                        attn: AttentionContext = NO_ATTENTION) -> PackedTokens:
        """``attn`` is given at the blocks :meth:`attention_layers` names, and only there."""
        return tokens

    def after_block(self, tokens: PackedTokens, keys: Tensor | None, layer: int, depth: int) -> PackedTokens:
        """``keys`` are this block's attention keys for ``tokens``, or ``None`` when ``after_attention``
        of the same block already changed the tokens (their keys no longer line up)."""
        return tokens

    def calibrate(self, videos: Iterable[Tensor]) -> Any:
        """Fit data-dependent parameters on ``videos`` (ImageNet-normalised batches); called before any
        measured work when ``calibrates`` is set."""
        return None

    def calibrate_model(self, model: torch.nn.Module, batches: Iterable[Tensor]) -> Any:
        """Fit data-dependent parameters by running ``model`` (the cell's own) on ``batches`` (model inputs
        of train-split clips); called before any measured work when ``calibrates_with_model`` is set. Returns
        a dataclass describing what it used and found, recorded with the cell."""
        return None

    def budget_reducer(self) -> Reducer:
        """The reducer whose token counts define this one's budget (docs/architecture.md §6): itself, or the fixed
        schedule a content-adaptive one is calibrated to (threshold merging: ToMe at its target r)."""
        return self

    def for_eval(self) -> Reducer:
        """The reducer to evaluate a model trained with this one: itself, or the baseline ``none`` for a
        ``train_only`` one. RLT + random masking returns plain RLT."""
        if self.train_only:
            # the baseline is a reducer like the others (none.py imports this module, hence here)
            from .none import NoReducer

            return NoReducer()
        return self

    # --- helpers shared by all reducers -------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """The reducer's parameters as a plain dict (recorded with every result)."""
        if dataclasses.is_dataclass(self):
            return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {}

    def fresh(self) -> Reducer:
        """A new instance with the same parameters (and so the same seed state)."""
        return type(self)(**self.params())

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


def _takes_video_only(fn: Any) -> bool:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) == 2 and not any(p.kind is p.VAR_POSITIONAL for p in params)


def grid_of(video: Tensor, tubelet: int, patch: int) -> tuple[int, int, int]:
    """(T', H', W') for a video [B,3,T,H,W]; raises a clear error when it does not tile."""
    if video.dim() != 5 or video.shape[1] != 3:
        raise ValueError(f"expected a video batch [B,3,T,H,W], got shape {tuple(video.shape)}")
    _, _, t, h, w = video.shape
    if t % tubelet or h % patch or w % patch:
        raise ValueError(
            f"video of {t} frames × {h}×{w} does not tile into {tubelet}×{patch}×{patch} tubelets"
        )
    return t // tubelet, h // patch, w // patch
