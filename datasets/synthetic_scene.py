"""The synthetic benchmark's scenes and their rendering: pure functions of a seeded generator, no I/O.

A :class:`Scene` is everything about a clip except its label, drawn independently of it; :func:`render`
paints it under a motion label over a background cut from a real clip. ``datasets.synthetic`` builds the
dataset (splits, seeds, cache) on top.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MOTIONS = ("left", "right", "up", "down", "cw", "ccw")
SHAPES = ("triangle", "L", "T", "bar", "halfdisc")
BACKGROUND_MODES = ("static", "video", "camera")

# screen-space direction (dx, dy) per translation label (y grows downwards); rotation sign per turn label
_TRANSLATE = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
_ROTATE = {"cw": 1.0, "ccw": -1.0}  # with y down, a positive angle turns clockwise on screen


@dataclass(frozen=True)
class Sprite:
    """One foreground object: every field drawn independently of the label."""

    shape: str
    color: tuple[int, int, int]
    radius: float  # half-size, px
    y0: float  # centre in the first frame, px
    x0: float
    angle0: float  # orientation in the first frame, radians
    speed: float  # translation px/frame
    turn: float  # rotation radians/frame
    outline: float = 2.0  # width of the black outline, px
    contrast: float = 1.0  # opacity over the background: 1 paints it solid, near 0 it is barely there


@dataclass(frozen=True)
class Scene:
    """Everything about a clip except its label (drawn independently of it)."""

    background: str  # static | video | camera
    video: int  # which bundled clip
    frame0: int  # first background frame
    crop_y: int
    crop_x: int
    cam_vy: float  # camera pan, px/frame (0 unless background == "camera")
    cam_vx: float
    objects: tuple[Sprite, ...]  # all perform the label's motion


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test in object-local coordinates scaled to unit half-size (u right, v down)."""
    if shape == "triangle":  # equilateral, one vertex pointing along −v
        inside = np.ones(u.shape, dtype=bool)
        for a in (math.pi / 2, math.pi / 2 + 2 * math.pi / 3, math.pi / 2 + 4 * math.pi / 3):
            inside &= (u * math.cos(a) + v * math.sin(a)) <= 0.5
        return inside
    if shape == "L":
        return (np.abs(u) <= 1) & (np.abs(v) <= 1) & ~((u > -0.25) & (v < 0.25))
    if shape == "T":
        return ((v >= -1) & (v <= -0.4) & (np.abs(u) <= 1)) | ((np.abs(u) <= 0.3) & (v >= -1) & (v <= 1))
    if shape == "bar":
        return (np.abs(u) <= 1) & (np.abs(v) <= 0.35)
    if shape == "halfdisc":
        return (u * u + v * v <= 1) & (v <= 0.2)
    raise ValueError(f"unknown shape {shape!r}")


def _object_params(obj: Sprite, label: str, t: int, size: int) -> tuple[float, float, float]:
    """(y, x, angle) of ``obj`` at frame ``t`` under ``label``."""
    y, x, a = obj.y0, obj.x0, obj.angle0
    if label in _TRANSLATE:
        dx, dy = _TRANSLATE[label]
        x, y = (x + dx * obj.speed * t) % size, (y + dy * obj.speed * t) % size
    elif label in _ROTATE:
        a = a + _ROTATE[label] * obj.turn * t
    else:
        raise ValueError(f"unknown motion {label!r}; choose from {', '.join(MOTIONS)}")
    return y, x, a


def _draw(frames: np.ndarray, obj: Sprite, oy: np.ndarray, ox: np.ndarray, a: np.ndarray) -> None:
    """Paint ``obj`` into every frame of ``frames`` [T, s, s, 3] in place, in frame t centred at (oy[t], ox[t])
    and turned by a[t]. Pixels are taken round the frame (a torus): an object leaving one edge re-enters at
    the other. All frames in one set of array operations (per frame, numpy's per-call cost dominated)."""
    n, s = frames.shape[0], frames.shape[1]
    r_out = obj.radius + obj.outline
    half = int(math.ceil(math.sqrt(2.0) * r_out)) + 1  # every shape fits in the rotated unit square
    box = np.arange(-half, half + 1) if 2 * half + 1 < s else None
    oy, ox = oy[:, None], ox[:, None]  # [T, 1], float64
    rows = (np.floor(oy).astype(np.int64) + box) % s if box is not None else np.broadcast_to(np.arange(s), (n, s))
    cols = (np.floor(ox).astype(np.int64) + box) % s if box is not None else np.broadcast_to(np.arange(s), (n, s))
    dy = ((rows + 0.5 - oy + s / 2) % s - s / 2).astype(np.float32)[:, :, None]
    dx = ((cols + 0.5 - ox + s / 2) % s - s / 2).astype(np.float32)[:, None, :]
    c, sn = (np.cos(a).astype(np.float32)[:, None, None], np.sin(a).astype(np.float32)[:, None, None])
    u = c * dx + sn * dy
    v = -sn * dx + c * dy
    inner = _shape_mask(obj.shape, u / obj.radius, v / obj.radius)
    outer = _shape_mask(obj.shape, u / r_out, v / r_out) | inner
    where = (np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :])
    patch = frames[where]  # [T, K, K, 3]
    if obj.contrast >= 1.0:
        patch[outer] = 0
        patch[inner] = np.asarray(obj.color, dtype=np.uint8)
    else:  # blended: a faint object changes its tubelets little, as camouflaged motion does in real video
        k = obj.contrast
        p = patch.astype(np.float32)
        p[outer] *= 1.0 - k
        p[inner] += k * (np.asarray(obj.color, dtype=np.float32) - p[inner])
        patch = np.rint(p).astype(np.uint8)
    frames[where] = patch


def render(scene: Scene, label: str, backgrounds: list[np.ndarray], num_frames: int, img_size: int,
           noise: float = 0.0, rng: np.random.Generator | None = None) -> np.ndarray:
    """Render ``scene`` under motion ``label`` → uint8 [num_frames, img_size, img_size, 3]."""
    src = backgrounds[scene.video]
    s = img_size
    out = np.empty((num_frames, s, s, 3), dtype=np.uint8)
    for t in range(num_frames):
        f = scene.frame0 if scene.background == "static" else scene.frame0 + t
        cy = min(max(int(round(scene.crop_y + scene.cam_vy * t)), 0), src.shape[1] - s)
        cx = min(max(int(round(scene.crop_x + scene.cam_vx * t)), 0), src.shape[2] - s)
        out[t] = src[f % len(src), cy:cy + s, cx:cx + s]
    for obj in scene.objects:  # in order, so in every frame a later object covers an earlier one
        yxa = np.array([_object_params(obj, label, t, s) for t in range(num_frames)])
        _draw(out, obj, yxa[:, 0], yxa[:, 1], yxa[:, 2])
    if noise > 0:
        rng = rng if rng is not None else np.random.default_rng(0)
        noisy = out.astype(np.float32) + rng.normal(0.0, noise, size=out.shape).astype(np.float32)
        out = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    return out


def sample_scene(rng: np.random.Generator, backgrounds: list[np.ndarray], num_frames: int, img_size: int,
                 static_share: float, camera_share: float, speed: tuple[float, float],
                 turn_deg: tuple[float, float], radius: tuple[float, float],
                 camera_speed: tuple[float, float], num_objects: tuple[int, int] = (1, 1),
                 outline: float = 2.0, contrast: tuple[float, float] = (1.0, 1.0), faint_share: float = 0.0) -> Scene:
    """Draw a label-independent scene. A share ``faint_share`` of clips is *faint*: their objects' opacity
    is drawn once per clip from ``contrast`` (every object of a clip as faint as the others, so a clip is
    hard or easy as a whole); the other clips' objects are solid."""
    s = img_size
    r = rng.random()
    mode = "static" if r < static_share else ("camera" if r < static_share + camera_share else "video")
    vid = int(rng.integers(len(backgrounds)))
    src = backgrounds[vid]
    n_src, h, w = src.shape[:3]
    frame0 = int(rng.integers(max(1, n_src - num_frames)))
    cam_vy = cam_vx = 0.0
    if mode == "camera":
        # pan in a random direction, as fast as drawn but never leaving the source frame
        ang = rng.uniform(0, 2 * math.pi)
        spd = rng.uniform(*camera_speed)
        cam_vy, cam_vx = spd * math.sin(ang), spd * math.cos(ang)
        span = max(num_frames - 1, 1)
        lim_y, lim_x = (h - s) / span, (w - s) / span
        k = min(1.0, lim_y / abs(cam_vy) if cam_vy else 1.0, lim_x / abs(cam_vx) if cam_vx else 1.0)
        cam_vy, cam_vx = cam_vy * k, cam_vx * k
    # crop origin such that the whole pan stays inside the source frame
    ey, ex = cam_vy * (num_frames - 1), cam_vx * (num_frames - 1)
    lo_y, hi_y = max(0.0, -ey), (h - s) - max(0.0, ey)
    lo_x, hi_x = max(0.0, -ex), (w - s) - max(0.0, ex)
    crop_y = int(round(rng.uniform(lo_y, max(lo_y, hi_y))))
    crop_x = int(round(rng.uniform(lo_x, max(lo_x, hi_x))))
    n_obj = int(rng.integers(num_objects[0], num_objects[1] + 1))
    opacity = 1.0
    if faint_share > 0:  # drawn only then: with no faint clips the scene's random stream is as before
        if rng.random() < faint_share:
            opacity = float(rng.uniform(*contrast))
    objects = []
    for _ in range(n_obj):
        # a saturated colour: random hue, full saturation, bright
        hue = rng.uniform(0, 6)
        x_ = 1 - abs(hue % 2 - 1)
        rgb = [(1, x_, 0), (x_, 1, 0), (0, 1, x_), (0, x_, 1), (x_, 0, 1), (1, 0, x_)][int(hue) % 6]
        objects.append(Sprite(
            shape=SHAPES[int(rng.integers(len(SHAPES)))],
            color=tuple(int(round(55 + 200 * c)) for c in rgb),  # type: ignore[arg-type]
            radius=float(rng.uniform(*radius)),
            y0=float(rng.uniform(0, s)), x0=float(rng.uniform(0, s)), angle0=float(rng.uniform(0, 2 * math.pi)),
            speed=float(rng.uniform(*speed)), turn=math.radians(float(rng.uniform(*turn_deg))),
            outline=float(outline), contrast=opacity))
    return Scene(background=mode, video=vid, frame0=frame0, crop_y=crop_y, crop_x=crop_x,
                 cam_vy=float(cam_vy), cam_vx=float(cam_vx), objects=tuple(objects))
