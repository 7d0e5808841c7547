"""Spatial transforms and normalisation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tokenbench.datasets import IMAGENET_MEAN, IMAGENET_STD, to_model_input
from tokenbench.datasets.transforms import (
    center_crop,
    eval_transform,
    resize,
    resize_short_side,
    short_side_size,
    spatial_crop,
    train_transform,
)


def ramp(t=4, h=72, w=128):
    """Frames whose red channel is the column index and green the row index (values mark positions)."""
    clip = torch.zeros(t, h, w, 3, dtype=torch.uint8)
    clip[..., 0] = torch.arange(w, dtype=torch.uint8)[None, None, :]
    clip[..., 1] = torch.arange(h, dtype=torch.uint8)[None, :, None]
    clip[..., 2] = torch.arange(t, dtype=torch.uint8)[:, None, None] * 50
    return clip


def test_short_side_resize_keeps_aspect():
    assert short_side_size(720, 1280, 224) == (224, 398)
    assert short_side_size(1280, 720, 224) == (398, 224)
    out = resize_short_side(ramp(h=72, w=128), 36)
    assert out.shape == (4, 36, 64, 3) and out.dtype == torch.uint8
    flat = torch.full((2, 50, 80, 3), 77, dtype=torch.uint8)
    assert (resize_short_side(flat, 20) == 77).all()  # a flat image stays flat (no rounding drift)


def test_resize_is_antialiased():
    # a one-pixel checkerboard shrunk 4×: antialiased bilinear averages it to mid-grey; without the
    # low-pass filter it would alias to black or white patches
    board = ((torch.arange(64)[:, None] + torch.arange(64)[None, :]) % 2 * 255).to(torch.uint8)
    clip = board[None, :, :, None].expand(1, 64, 64, 3).contiguous()
    small = resize(clip, 16, 16).float()
    assert (small - 127.5).abs().max() < 3


def test_center_crop_and_eval_transform():
    c = center_crop(ramp(h=72, w=128), 64)
    assert c.shape == (4, 64, 64, 3)
    assert c[0, 0, 0, 0] == 32 and c[0, 0, 0, 1] == 4  # (128-64)/2 = 32 columns, (72-64)/2 = 4 rows off
    e = eval_transform(ramp(h=72, w=128).numpy(), 36)
    assert e.shape == (4, 36, 36, 3) and e.is_contiguous()
    assert e[:, :, :, 2].unique().tolist() == [0, 50, 100, 150]  # frames stay in order, untouched in time


def test_three_crops_span_the_long_side():
    clip = resize_short_side(ramp(h=72, w=128), 72)
    left, mid, right = (spatial_crop(clip, 72, k, 3) for k in range(3))
    assert left[0, 0, 0, 0] == 0 and mid[0, 0, 0, 0] == 28 and right[0, 0, -1, 0] == 127
    tall = clip.transpose(1, 2).contiguous()  # portrait: crops run top to bottom
    top, bottom = spatial_crop(tall, 72, 0, 3), spatial_crop(tall, 72, 2, 3)
    assert top[0, 0, 0, 0] == 0 and bottom[0, -1, 0, 0] == 127
    with pytest.raises(ValueError):
        spatial_crop(clip, 72, 3, 3)


def test_train_transform_is_random_but_seeded():
    clip = ramp(h=72, w=128)
    a = train_transform(clip, 32, torch.Generator().manual_seed(5))
    b = train_transform(clip, 32, torch.Generator().manual_seed(5))
    assert a.shape == (4, 32, 32, 3)
    assert torch.equal(a, b)
    outs = {train_transform(clip, 32, torch.Generator().manual_seed(s)).float().mean().item() for s in range(8)}
    assert len(outs) > 4
    # every frame gets the same crop: the green channel (row index) is identical across frames
    assert torch.equal(a[0, ..., 1], a[3, ..., 1])


def test_flip_happens_about_half_the_time():
    clip = ramp(h=64, w=64)
    flips = 0
    for s in range(40):
        out = train_transform(clip, 32, torch.Generator().manual_seed(s), scale=(1.0, 1.0), ratio=(1.0, 1.0))
        flips += int(out[0, 0, 0, 0] > out[0, 0, -1, 0])
    assert 10 <= flips <= 30
    never = [train_transform(clip, 32, torch.Generator().manual_seed(s), scale=(1.0, 1.0), ratio=(1.0, 1.0),
                             flip=False) for s in range(5)]
    assert all(o[0, 0, 0, 0] < o[0, 0, -1, 0] for o in never)


def test_to_model_input_equals_the_textbook_formula_on_every_value():
    """The fused scale-and-shift gives (x/255 − mean)/std, per channel, for all 256 levels (to ~1 ulp)."""
    levels = torch.arange(256, dtype=torch.uint8)
    per_channel = torch.stack([levels, levels.flip(0), levels.roll(7)], -1).view(16, 16, 3)  # every level in each
    clips = torch.stack([per_channel.expand(3, 16, 16, 3), per_channel.flip(0).expand(3, 16, 16, 3)])
    ref = ((clips.double() / 255 - torch.tensor(IMAGENET_MEAN, dtype=torch.float64))
           / torch.tensor(IMAGENET_STD, dtype=torch.float64)).permute(0, 4, 1, 2, 3)
    got = to_model_input(clips)
    assert got.is_contiguous() and got.shape == (2, 3, 3, 16, 16)
    assert torch.allclose(got.double(), ref, rtol=0, atol=2e-6)
    assert torch.allclose(to_model_input(clips, torch.float64), ref, rtol=0, atol=1e-12)


def test_to_model_input_normalises_with_imagenet_statistics():
    clips = torch.zeros(2, 4, 8, 8, 3, dtype=torch.uint8)
    for c in range(3):
        clips[..., c] = int(round(IMAGENET_MEAN[c] * 255))
    clips[1, ..., 0] = 255
    x = to_model_input(clips)
    assert x.shape == (2, 3, 4, 8, 8) and x.dtype == torch.float32
    assert x[0].abs().max() < 0.01  # the mean colour maps to ~0
    assert torch.allclose(x[1, 0], torch.full((4, 8, 8), (1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]))
    assert to_model_input(clips[0].numpy()).shape == (1, 3, 4, 8, 8)
    assert to_model_input(clips, torch.float64).dtype == torch.float64
    with pytest.raises(ValueError, match="uint8"):
        to_model_input(clips.float())
    with pytest.raises(ValueError):
        to_model_input(np.zeros((2, 4, 8, 8), dtype=np.uint8))
