"""Honest wall-clock (DESIGN.md §5).

:func:`time_forward` times the forward pass of decoded clips already resident on the device:

* clips are cut into full batches of ``batch_size`` *before* timing (indexing is not timed); one repeat
  runs every batch once, and its time is reported per batch;
* ``reducer.select`` runs inside the timed region (``model(video, reducer)`` calls it: selection is part
  of inference cost) and is also timed alone (:attr:`TimingResult.select_ms_median`);
* warm-up runs of each arm, then ``repeats`` timed runs interleaved baseline, reducer, baseline, … so
  that drift (thermal, other tenants of a shared machine) hits both arms alike. Each reducer run is
  paired with the baseline run just before it; the speedup is the median of those paired ratios and their
  quartiles give its spread. (The ratio of the two arms' medians is not used: with few repeats and a
  drifting machine it can fall outside the paired ratios' own IQR.);
* CUDA events on a GPU, ``time.perf_counter`` on CPU with ``torch.set_num_threads`` fixed for the run and
  recorded; everything under ``torch.inference_mode`` with the model in eval mode.

Decoding is measured apart (:func:`time_decode`: decode + sample + resize per clip).

Clip preparation (:func:`load_clip`, :func:`to_model_input`): decode through
``tokenbench.datasets.decode.read_video``, take ``num_frames`` frames ``stride`` apart from ``start``, then
the datasets package's eval transform (short side to ``img_size``, centre crop) and normalisation.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


# --- clip preparation --------------------------------------------------------------------------------
def sample_frames(frames: Tensor, num_frames: int, start: int = 0, stride: int = 1) -> Tensor:
    """``num_frames`` frames ``stride`` apart from ``start`` of a decoded video [T,H,W,3]; indices past the
    end repeat the last frame (short videos)."""
    idx = torch.arange(num_frames) * stride + start
    return frames[idx.clamp(max=frames.shape[0] - 1)]


def load_clip(path: str | Path, num_frames: int = 16, img_size: int = 224, *, start: int = 0,
              stride: int = 4) -> Tensor:
    """Decode ``path`` and cut one clip: uint8 [num_frames, img_size, img_size, 3] (short side resized to
    ``img_size``, centre crop: ``tokenbench.datasets.transforms.eval_transform``)."""
    from tokenbench.datasets.decode import read_video
    from tokenbench.datasets.transforms import eval_transform

    frames = torch.from_numpy(read_video(path, max_frames=start + (num_frames - 1) * stride + 1))
    return eval_transform(sample_frames(frames, num_frames, start, stride), img_size)


def to_model_input(clips: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 [B,T,H,W,3] → ImageNet-normalised float [B,3,T,H,W] on the clips' device."""
    from tokenbench.datasets.transforms import to_model_input as convert

    return convert(clips, dtype)


# --- statistics --------------------------------------------------------------------------------------
def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """(q1, median, q3), linear interpolation (numpy's default)."""
    xs = sorted(values)
    if not xs:
        raise ValueError("no values")
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]

    def q(p: float) -> float:
        pos = p * (len(xs) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

    return q(0.25), q(0.5), q(0.75)


@dataclass
class ArmTiming:
    """Per-batch times (ms) of one arm: one entry per repeat (mean over the repeat's batches)."""

    times_ms: list[float]
    batch_size: int

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def q1_ms(self) -> float:
        return quartiles(self.times_ms)[0]

    @property
    def q3_ms(self) -> float:
        return quartiles(self.times_ms)[2]

    @property
    def iqr_ms(self) -> float:
        return self.q3_ms - self.q1_ms

    @property
    def clips_per_s(self) -> float:
        return self.batch_size / (self.median_ms / 1000.0)


@dataclass
class TimingResult:
    reducer: ArmTiming
    baseline: ArmTiming | None
    select_ms: list[float]  # reducer.select alone, ms per batch, one entry per repeat (empty: no reducer)
    order: list[str]  # the arms in the order they were timed ("baseline"/"reducer"), warm-up excluded
    threads: int  # torch.get_num_threads() during the runs
    device: str
    batch_size: int
    num_batches: int  # batches per repeat
    num_clips: int  # distinct clips timed
    warmup: int
    repeats: int
    timer: str  # "cuda_event" or "perf_counter"
    backend: str  # attention backend that ran (model.last_stats.backend of the reducer arm)
    peak_mem_mb: float | None = None
    tokens_in: list[int] = field(default_factory=list)  # per clip of the last reducer batch

    @property
    def speedup(self) -> float | None:
        """Median of the paired per-repeat ratios baseline / reducer (same run); see the module docstring."""
        return statistics.median(self.paired_ratios) if self.baseline is not None else None

    @property
    def paired_ratios(self) -> list[float]:
        """baseline / reducer per repeat, pairing each reducer run with the baseline run just before it."""
        if self.baseline is None:
            return []
        return [b / r for b, r in zip(self.baseline.times_ms, self.reducer.times_ms)]

    @property
    def select_ms_median(self) -> float | None:
        return statistics.median(self.select_ms) if self.select_ms else None

    def as_metrics(self) -> dict[str, Any]:
        """Result-record metrics (harness.schema names)."""
        out: dict[str, Any] = {
            "time_ms_median": self.reducer.median_ms,
            "time_ms_q1": self.reducer.q1_ms,
            "time_ms_q3": self.reducer.q3_ms,
            "clips_per_s": self.reducer.clips_per_s,
            "repeats": self.repeats,
            "warmup": self.warmup,
        }
        if self.baseline is not None:
            q1, _, q3 = quartiles(self.paired_ratios)
            out.update(baseline_time_ms_median=self.baseline.median_ms, speedup=self.speedup,
                       speedup_q1=q1, speedup_q3=q3)
        if self.select_ms:
            out["select_ms_median"] = self.select_ms_median
        if self.peak_mem_mb is not None:
            out["peak_mem_mb"] = self.peak_mem_mb
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(speedup=self.speedup, paired_ratios=self.paired_ratios, select_ms_median=self.select_ms_median)
        return d


# --- timers ------------------------------------------------------------------------------------------
def _timer(device: torch.device) -> tuple[str, Callable[[Callable[[], Any]], float]]:
    """A function that runs ``fn`` and returns its wall-clock in ms."""
    if device.type == "cuda":
        def run_cuda(fn: Callable[[], Any]) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)

        return "cuda_event", run_cuda

    def run_cpu(fn: Callable[[], Any]) -> float:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1000.0

    return "perf_counter", run_cpu


@contextmanager
def fixed_threads(threads: int | None):
    """``torch.set_num_threads(threads)`` for the block (restored after); ``None`` keeps the current count."""
    before = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be ≥ 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def stack_clips(videos: Tensor | Sequence[Tensor]) -> Tensor:
    """A tensor [N,3,T,H,W], or a sequence of [3,T,H,W] / [n,3,T,H,W] tensors → one [N,3,T,H,W] tensor."""
    if isinstance(videos, Tensor):
        return videos if videos.dim() == 5 else videos.unsqueeze(0)
    return torch.cat([v if v.dim() == 5 else v.unsqueeze(0) for v in videos])


def make_batches(videos: Tensor | Sequence[Tensor], batch_size: int) -> list[Tensor]:
    """Full batches [batch_size,3,T,H,W] covering every clip once; the last is filled by wrapping around."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    clips = stack_clips(videos)
    n = clips.shape[0]
    if n == 0:
        raise ValueError("no clips to time")
    num_batches = -(-n // batch_size)
    idx = torch.arange(num_batches * batch_size, device=clips.device) % n
    return [clips.index_select(0, idx[i * batch_size:(i + 1) * batch_size]).contiguous()
            for i in range(num_batches)]


def time_forward(model: torch.nn.Module, videos_on_device: Tensor | Sequence[Tensor], reducer=None, *,
                 baseline: bool = True, warmup: int = 2, repeats: int = 10, batch_size: int = 8,
                 threads: int | None = None) -> TimingResult:
    """Time ``model(video, reducer)`` over pre-decoded, normalised clips already on the device.

    With ``reducer=None`` only the baseline is timed (it is then the ``reducer`` arm and
    ``baseline`` is None). Otherwise, with ``baseline=True``, the baseline (no reducer) and the reducer
    are timed interleaved: warm-up (baseline, reducer) × ``warmup``, then (baseline, reducer) × ``repeats``.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats ≥ 1 and warmup ≥ 0, got {repeats} and {warmup}")
    clips = stack_clips(videos_on_device)
    num_clips = clips.shape[0]
    batches = make_batches(clips, batch_size)
    device = batches[0].device
    timer_name, timed = _timer(device)
    arms: list[tuple[str, Any]] = []
    if reducer is not None and baseline:
        arms.append(("baseline", None))
    arms.append(("reducer", reducer))
    if reducer is not None:
        reducer.check_geometry(model.grid, model.depth)

    def run_arm(red) -> float:
        total = 0.0
        for batch in batches:
            total += timed(lambda b=batch: model(b, reducer=red))
        return total / len(batches)

    def run_select() -> float:
        total = 0.0
        for batch in batches:
            total += timed(lambda b=batch: reducer.select(b))
        return total / len(batches)

    was_training = model.training
    model.eval()
    times: dict[str, list[float]] = {name: [] for name, _ in arms}
    order: list[str] = []
    select_ms: list[float] = []
    backend, tokens_in = "", []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        with fixed_threads(threads) as n_threads, torch.inference_mode():
            for _ in range(warmup):
                for _name, red in arms:
                    run_arm(red)
            for _ in range(repeats):
                for name, red in arms:
                    times[name].append(run_arm(red))
                    order.append(name)
                    if name == "reducer":
                        backend = model.last_stats.backend
                        tokens_in = list(model.last_stats.tokens_in)
            if reducer is not None:
                for _ in range(warmup):
                    run_select()
                select_ms = [run_select() for _ in range(repeats)]
    finally:
        model.train(was_training)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return TimingResult(
        reducer=ArmTiming(times["reducer"], batch_size),
        baseline=ArmTiming(times["baseline"], batch_size) if "baseline" in times else None,
        select_ms=select_ms, order=order, threads=n_threads, device=str(device), batch_size=batch_size,
        num_batches=len(batches), num_clips=num_clips, warmup=warmup, repeats=repeats, timer=timer_name,
        backend=backend, peak_mem_mb=peak, tokens_in=tokens_in,
    )


# --- decode timing -----------------------------------------------------------------------------------
@dataclass
class DecodeTiming:
    ms_per_clip: list[float]  # one entry per clip decoded

    @property
    def median_ms(self) -> float:
        return statistics.median(self.ms_per_clip)

    @property
    def mean_ms(self) -> float:
        return statistics.fmean(self.ms_per_clip)

    def as_metrics(self) -> dict[str, float]:
        return {"decode_ms_per_clip": self.mean_ms}


def time_decode(paths: Sequence[str | Path], num_frames: int = 16, img_size: int = 224, *, stride: int = 4,
                start: int = 0, threads: int | None = None,
                loader: Callable[..., Tensor] | None = None) -> DecodeTiming:
    """Decode + sample + resize/crop each of ``paths`` once, timed per clip with ``perf_counter`` (ms).

    ``loader(path, num_frames, img_size, start=, stride=)`` defaults to :func:`load_clip`."""
    loader = loader or load_clip
    out = []
    with fixed_threads(threads):
        for p in paths:
            t0 = time.perf_counter()
            loader(p, num_frames, img_size, start=start, stride=stride)
            out.append((time.perf_counter() - t0) * 1000.0)
    return DecodeTiming(out)
