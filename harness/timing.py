"""Honest wall-clock (docs/architecture.md §5).

:func:`time_forward` times the forward pass of decoded clips already resident on the device:

* clips are cut into full batches of ``batch_size`` *before* timing (indexing is not timed); one repeat
  runs every batch once, and its time is reported per batch;
* ``reducer.select`` runs inside the timed region (``model(video, reducer)`` calls it: selection is part
  of inference cost) and is also timed alone (:attr:`TimingResult.select_ms_median`); a ``select`` that
  writes into the clips it is given fails the call (``harness.input_guard``: hashes before and after, untimed);
* two arms, the baseline (no reducer) and the reducer, each run every batch once per repeat, in a
  balanced order: ABBA over repeats (baseline first in even repeats, reducer first in odd ones), so neither
  arm always runs on a machine the other has just warmed (caches, allocator, frequency). Each repeat's
  two runs are paired; the speedup is the median of the paired ratios, its interval a bootstrap over
  repeats. (The ratio of the two arms' medians is not used: with few repeats and a drifting machine it can
  fall outside the paired ratios' own spread.);
* **A/A control**: with the baseline reducer (``none``, the default) and ``baseline=True`` both arms are the
  baseline, timed through exactly the same protocol; its speedup must read 1.00 within its interval, which is what
  validates the estimator on this machine;
* the garbage collector is collected before and disabled during the timed runs (a collection pause
  would land in whichever arm happened to allocate last), and the host heap is kept between forwards
  (``harness.allocator``: no mmap, page faults and munmap of large tensors in every timed forward); the
  minor page faults of every timed arm run are recorded;
* CUDA events on a GPU, ``time.perf_counter`` on CPU with ``torch.set_num_threads`` fixed for the run and
  recorded; everything under ``torch.inference_mode`` with the model in eval mode;
* **interference on the record**: the host is sampled at the start and end of every timed arm run and
  judged with the paired ratios' spread (``harness.interference``);
* per arm: the attention backend and path that ran (``model.last_stats.backend`` / ``.attn_path``: dense
  batched, per-sequence packed or a varlen kernel) and, on CUDA, the peak memory above
  what was allocated before the arm started (the resident clips are not counted). On CPU there is no
  allocator statistic that means the same, so no memory figure is given.

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

from tokenbench.reducers.base import Reducer

from .allocator import AllocatorPolicy, collector_paused, heap_kept, minor_faults
from .input_guard import check_unchanged, digests
from .interference import HostProbe, HostSample, Interference, read_proc_stat, usable_cpus  # noqa: F401
from .intervals import median_interval, quartiles  # noqa: F401  (quartiles: timing's statistics, re-exported)
from .model import BASELINE


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
    baseline_backend: str = ""  # the same for the baseline arm
    attn_path: str = ""  # attention path of the reducer arm (dense | packed | varlen: harness.attention.PATHS)
    baseline_attn_path: str = ""  # the same for the baseline arm
    peak_mem_mb: float | None = None  # CUDA: the reducer arm's peak above what was resident before it
    baseline_peak_mem_mb: float | None = None
    tokens_in: list[int] = field(default_factory=list)  # per clip of the last reducer batch
    host_samples: list[HostSample] = field(default_factory=list)  # /proc/stat at each timed arm's start and end
    cpus: int = 1  # CPUs this process could run on
    allocator: AllocatorPolicy = field(default_factory=AllocatorPolicy)  # what timing did to the host heap
    page_faults: dict[str, list[int]] = field(default_factory=dict)  # minor faults per arm, one per timed run

    @property
    def interference(self) -> Interference:
        """What the host did while the arms were timed (:class:`Interference` has the rules)."""
        return Interference.measure(self.host_samples, self.paired_ratios, self.threads, self.cpus)

    @property
    def speedup(self) -> float | None:
        """Median of the paired per-repeat ratios baseline / reducer (same run); see the module docstring."""
        return statistics.median(self.paired_ratios) if self.baseline is not None else None

    @property
    def paired_ratios(self) -> list[float]:
        """baseline / reducer per repeat (the two runs of one repeat, whichever ran first)."""
        if self.baseline is None:
            return []
        return [b / r for b, r in zip(self.baseline.times_ms, self.reducer.times_ms)]

    @property
    def speedup_interval(self) -> tuple[float, float] | None:
        """95 % bootstrap interval (over repeats) of :attr:`speedup`."""
        return median_interval(self.paired_ratios) if self.baseline is not None else None

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
        if self.attn_path:
            out["attn_path"] = self.attn_path
        if self.baseline_attn_path:
            out["baseline_attn_path"] = self.baseline_attn_path
        if self.baseline is not None:
            q1, _, q3 = quartiles(self.paired_ratios)
            lo, hi = self.speedup_interval
            out.update(baseline_time_ms_median=self.baseline.median_ms, speedup=self.speedup,
                       speedup_q1=q1, speedup_q3=q3, speedup_ci_lo=lo, speedup_ci_hi=hi)
        if self.select_ms:
            out["select_ms_median"] = self.select_ms_median
        if self.peak_mem_mb is not None:
            out["peak_mem_mb"] = self.peak_mem_mb
        if self.baseline_peak_mem_mb is not None:
            out["baseline_peak_mem_mb"] = self.baseline_peak_mem_mb
        return out | self.interference.as_metrics()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(speedup=self.speedup, paired_ratios=self.paired_ratios, select_ms_median=self.select_ms_median,
                 speedup_interval=self.speedup_interval, interference=self.interference.reasons)
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


def arm_order(repeat: int, arms: Sequence[str]) -> list[str]:
    """The order of the arms in one repeat: ABBA over repeats (reversed in every odd repeat)."""
    return list(arms) if repeat % 2 == 0 else list(reversed(arms))


class _PeakMemory:
    """CUDA peak memory of one arm above what was allocated when it started (resident clips excluded)."""

    def __init__(self, device: torch.device):
        self.on = device.type == "cuda"
        self.device = device
        self.peak: dict[str, float] = {}

    @contextmanager
    def arm(self, name: str):
        if not self.on:
            yield
            return
        torch.cuda.synchronize(self.device)
        start = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        yield
        torch.cuda.synchronize(self.device)
        mb = (torch.cuda.max_memory_allocated(self.device) - start) / 2**20
        self.peak[name] = max(self.peak.get(name, 0.0), mb)


def time_forward(model: torch.nn.Module, videos_on_device: Tensor | Sequence[Tensor], reducer: Reducer = BASELINE, *,
                 baseline: bool = True, warmup: int = 2, repeats: int = 10, batch_size: int = 8,
                 threads: int | None = None, probe: HostProbe | None = None,
                 heap: Callable[[], Any] = heap_kept) -> TimingResult:
    """Time ``model(video, reducer)`` over pre-decoded, normalised clips already on the device.

    With ``baseline=True`` the baseline (no reducer) is timed beside the reducer arm, ABBA over repeats,
    after ``warmup`` rounds of both; with the baseline reducer (``none``) that is the A/A control (both arms the
    baseline). With ``baseline=False`` only the reducer arm (or, without a reducer, the baseline) runs.
    ``probe`` samples the host around every timed arm run (default: ``/proc/stat``); ``heap`` is the host
    heap's policy while timed (``harness.allocator``).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats ≥ 1 and warmup ≥ 0, got {repeats} and {warmup}")
    clips = stack_clips(videos_on_device)
    num_clips = clips.shape[0]
    batches = make_batches(clips, batch_size)
    device = batches[0].device
    timer_name, timed = _timer(device)
    arms: dict[str, Any] = {"baseline": BASELINE} if baseline else {}
    arms["reducer"] = reducer
    reducer.check_geometry(model.grid, model.depth)
    memory = _PeakMemory(device)
    probe = probe if probe is not None else HostProbe()

    paths: dict[str, set[str]] = {}

    def run_arm(red, name: str = "") -> float:
        total = 0.0
        for batch in batches:
            total += timed(lambda b=batch: model(b, reducer=red))
            if name:  # every batch's path: one RLT batch may happen to have equal lengths
                paths.setdefault(name, set()).update(getattr(model.last_stats, "attn_path", "").split("+"))
        return total / len(batches)

    def run_select() -> float:
        total = 0.0
        for batch in batches:
            total += timed(lambda b=batch: reducer.select(b, model.geometry))
        return total / len(batches)

    was_training = model.training
    model.eval()
    times: dict[str, list[float]] = {name: [] for name in arms}
    backends: dict[str, str] = {}
    order: list[str] = []
    select_ms: list[float] = []
    tokens_in: list[int] = []
    faults: dict[str, list[int]] = {name: [] for name in arms}
    # hashed outside the timed region: a select that writes into its input fails the cell (input_guard)
    before = digests(batches) if not reducer.identity else []
    try:
        with fixed_threads(threads) as n_threads, torch.inference_mode(), collector_paused(), heap() as policy:
            for i in range(warmup):
                for name in arm_order(i, arms):
                    run_arm(arms[name])
            for i in range(repeats):
                for name in arm_order(i, arms):
                    with memory.arm(name):
                        probe.sample()  # the host as this arm starts and ends: interference while timed
                        flt = minor_faults()
                        times[name].append(run_arm(arms[name], name))
                        faults[name].append(minor_faults() - flt)
                        probe.sample()
                    order.append(name)
                    backends[name] = model.last_stats.backend
                    if name == "reducer":
                        tokens_in = list(model.last_stats.tokens_in)
            if not reducer.identity:
                for _ in range(warmup):
                    run_select()
                select_ms = [run_select() for _ in range(repeats)]
        check_unchanged(before, batches, reducer, "the timed runs")
    finally:
        model.train(was_training)
    return TimingResult(
        reducer=ArmTiming(times["reducer"], batch_size),
        baseline=ArmTiming(times["baseline"], batch_size) if "baseline" in times else None,
        select_ms=select_ms, order=order, threads=n_threads, device=str(device), batch_size=batch_size,
        num_batches=len(batches), num_clips=num_clips, warmup=warmup, repeats=repeats, timer=timer_name,
        backend=backends.get("reducer", ""), baseline_backend=backends.get("baseline", ""),
        attn_path="+".join(sorted(paths.get("reducer", set()) - {""})),
        baseline_attn_path="+".join(sorted(paths.get("baseline", set()) - {""})),
        peak_mem_mb=memory.peak.get("reducer"), baseline_peak_mem_mb=memory.peak.get("baseline"),
        tokens_in=tokens_in, host_samples=list(probe.samples), cpus=usable_cpus(), allocator=policy,
        page_faults=faults)


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
