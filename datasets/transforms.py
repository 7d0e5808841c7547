"""Spatial transforms on uint8 clips, and the normalisation the model takes.

Clips are uint8 tensors ``[T, H, W, 3]`` (channels last, as decoded); every transform returns the same
layout and dtype, so a dataset hands out compact uint8 clips and normalisation happens once, on the
batch, on the device (:func:`to_model_input`). Resizing is ``F.interpolate`` (bilinear,
``antialias=True``, the equivalent of PIL's / torchvision's antialiased bilinear), rounded back to uint8.

* eval: :func:`resize_short_side` to ``size`` then :func:`center_crop` (``size``²) —
  :func:`eval_transform`;
* multi-crop eval (VideoMAE's test protocol): after the short-side resize, ``num_crops`` crops
  evenly spaced along the long side (3 crops: left/centre/right, or top/centre/bottom) —
  :func:`spatial_crop` with ``crop_index``;
* train: :func:`random_resized_crop` (area fraction ``scale``, aspect ratio ``ratio``, the same crop
  for every frame) and a horizontal flip with probability ½ — :func:`train_transform`.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def as_clip(frames) -> Tensor:
    """numpy or tensor uint8 [T, H, W, 3] → uint8 tensor (no copy when possible)."""
    clip = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if clip.dtype != torch.uint8 or clip.dim() != 4 or clip.shape[-1] != 3:
        raise ValueError(f"expected a uint8 clip [T, H, W, 3], got {clip.dtype} {tuple(clip.shape)}")
    return clip


def resize(clip: Tensor, height: int, width: int) -> Tensor:
    """Bilinear antialiased resize of every frame to ``height × width``."""
    clip = as_clip(clip)
    if clip.shape[1] == height and clip.shape[2] == width:
        return clip
    x = clip.permute(0, 3, 1, 2)  # [T, 3, H, W] in channels-last memory
    if clip.device.type == "cpu":
        # PyTorch's uint8 antialiased bilinear kernel (fixed point, SIMD): 10–20× faster than the float
        # path on CPU and within one grey level of it
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    else:
        x = F.interpolate(x.float(), size=(height, width), mode="bilinear", align_corners=False,
                          antialias=True).round_().clamp_(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous()


def short_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) after scaling the shorter side to ``size``, keeping the aspect ratio."""
    if height <= width:
        return size, max(size, int(round(width * size / height)))
    return max(size, int(round(height * size / width))), size


def resize_short_side(clip: Tensor, size: int) -> Tensor:
    """Scale so the shorter side is ``size`` (aspect kept)."""
    clip = as_clip(clip)
    return resize(clip, *short_side_size(clip.shape[1], clip.shape[2], size))


def crop(clip: Tensor, top: int, left: int, height: int, width: int) -> Tensor:
    clip = as_clip(clip)
    h, w = clip.shape[1:3]
    if top < 0 or left < 0 or top + height > h or left + width > w:
        raise ValueError(f"crop {height}×{width} at ({top}, {left}) falls outside a {h}×{w} frame")
    return clip[:, top:top + height, left:left + width]


def center_crop(clip: Tensor, size: int) -> Tensor:
    clip = as_clip(clip)
    h, w = clip.shape[1:3]
    return crop(clip, (h - size) // 2, (w - size) // 2, size, size)


def spatial_crop(clip: Tensor, size: int, crop_index: int = 0, num_crops: int = 1) -> Tensor:
    """Crop ``crop_index`` of ``num_crops`` square ``size`` crops evenly spaced along the long side
    (one crop: the centre). Expects the short side already ``size``."""
    clip = as_clip(clip)
    if not 0 <= crop_index < num_crops:
        raise ValueError(f"crop_index {crop_index} outside 0…{num_crops - 1}")
    if num_crops == 1:
        return center_crop(clip, size)
    h, w = clip.shape[1:3]
    step = (max(h, w) - size) / (num_crops - 1)
    offset = int(crop_index * step)
    if h >= w:
        return crop(clip, offset, (w - size) // 2, size, size)
    return crop(clip, (h - size) // 2, offset, size, size)


def eval_transform(clip, size: int, crop_index: int = 0, num_crops: int = 1) -> Tensor:
    """Short-side resize to ``size``, then the centre crop (or crop ``crop_index`` of ``num_crops``)."""
    return spatial_crop(resize_short_side(clip, size), size, crop_index, num_crops).contiguous()


def random_resized_crop_box(height: int, width: int, generator: torch.Generator,
                            scale: tuple[float, float] = (0.08, 1.0),
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, h, w) of an Inception-style random crop: area fraction in ``scale``, aspect ratio
    log-uniform in ``ratio``; ten tries, then the centre crop at the closest allowed ratio."""
    area = height * width
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(2, generator=generator).tolist()
        target = area * (scale[0] + u[0] * (scale[1] - scale[0]))
        ar = math.exp(log_r[0] + u[1] * (log_r[1] - log_r[0]))
        w = int(round(math.sqrt(target * ar)))
        h = int(round(math.sqrt(target / ar)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(clip, size: int, generator: torch.Generator,
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Tensor:
    """One random crop (same box for all frames) resized to ``size × size``."""
    clip = as_clip(clip)
    top, left, h, w = random_resized_crop_box(clip.shape[1], clip.shape[2], generator, scale, ratio)
    return resize(crop(clip, top, left, h, w), size, size)


def train_transform(clip, size: int, generator: torch.Generator, *, scale: tuple[float, float] = (0.08, 1.0),
                    ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = True) -> Tensor:
    """Random resized crop, then a horizontal flip with probability ½ (``flip=False`` for SSv2, whose
    labels name left and right)."""
    out = random_resized_crop(clip, size, generator, scale, ratio)
    if flip and bool(torch.rand(1, generator=generator) < 0.5):
        out = out.flip(2)
    return out.contiguous()


def to_model_input(clips: Tensor, dtype: torch.dtype = torch.float32, *, mean=IMAGENET_MEAN,
                   std=IMAGENET_STD) -> Tensor:
    """uint8 clips [B, T, H, W, 3] (or one clip [T, H, W, 3]) → ``dtype`` [B, 3, T, H, W],
    ``(x/255 − mean)/std`` per channel (ImageNet statistics), on the clips' device."""
    if isinstance(clips, np.ndarray):
        clips = torch.from_numpy(clips)
    if clips.dim() == 4:
        clips = clips.unsqueeze(0)
    if clips.dim() != 5 or clips.shape[-1] != 3:
        raise ValueError(f"expected uint8 clips [B, T, H, W, 3], got {tuple(clips.shape)}")
    if clips.dtype != torch.uint8:
        raise ValueError(f"expected uint8 clips, got {clips.dtype} (normalise raw 0…255 pixels only once)")
    # one permuting copy into the output, then one in-place scale-and-shift: the eval pass converts every
    # clip this way, and three temporaries of the clip's size (the old form) took as long as a fifth of
    # vit_t's forward; scale 1/(255·std) and shift −mean/std equal (x/255 − mean)/std up to rounding (~1 ulp)
    stat = torch.float64
    scale = (1.0 / (255.0 * torch.tensor(std, dtype=stat))).to(dtype).view(1, 3, 1, 1, 1)
    shift = (-torch.tensor(mean, dtype=stat) / torch.tensor(std, dtype=stat)).to(dtype).view(1, 3, 1, 1, 1)
    b, t, h, w, c = clips.shape
    x = torch.empty((b, c, t, h, w), dtype=dtype, device=clips.device)
    x.copy_(clips.permute(0, 4, 1, 2, 3))
    return x.mul_(scale.to(clips.device)).add_(shift.to(clips.device))
