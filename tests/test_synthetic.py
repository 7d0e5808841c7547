"""The labelled synthetic motion benchmark: determinism, caching, balance, the label needs time, and the
background mix controls how much RLT can drop."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from tokenbench.datasets import get_dataset
from tokenbench.datasets.synthetic import (
    BACKGROUND_MODES,
    MOTIONS,
    SyntheticMotion,
    bundled_videos,
    load_backgrounds,
)

SMALL = {"num_frames": 8, "img_size": 112}


@pytest.fixture(scope="module", autouse=True)
def _backgrounds_decoded_once():
    """Decode the bundled clips once (from the user's cache when it holds them); tests that point
    TOKENBENCH_CACHE elsewhere still get the in-process copy."""
    load_backgrounds(146)


def small(split="val", n=24, **kw):
    return SyntheticMotion(split, num_clips=n, cache=False, **SMALL, **kw)


def test_contract_through_get_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENBENCH_CACHE", str(tmp_path))
    ds = get_dataset("synthetic", "val", num_frames=8, img_size=112, num_clips=12)
    assert isinstance(ds, SyntheticMotion)
    assert (ds.name, ds.num_classes, ds.num_frames, ds.img_size, len(ds)) == ("synthetic", 4, 8, 112, 12)
    assert ds.classes == ("left", "right", "up", "down")
    clip, label, meta = ds[3]
    assert clip.dtype == torch.uint8 and tuple(clip.shape) == (8, 112, 112, 3)
    assert isinstance(label, int) and 0 <= label < 4
    assert meta["index"] == 3 and meta["path"] == "synthetic://val/3"
    assert meta["motion"] == ds.classes[label] and meta["background"] in BACKGROUND_MODES
    info = ds.info()
    assert info["dataset"] == "synthetic" and info["num_clips"] == 12 and info["cache_key"] == ds.cache_key


def test_same_seed_same_clips_and_labels():
    a, b = small(), small()
    np.testing.assert_array_equal(np.asarray(a.clips), np.asarray(b.clips))
    np.testing.assert_array_equal(a.labels, b.labels)
    c = small(seed=1)
    assert not np.array_equal(np.asarray(a.clips), np.asarray(c.clips))


def test_train_and_val_are_disjoint_draws():
    tr, va = small("train"), small("val")
    # no val clip equals any train clip
    flat_tr = np.asarray(tr.clips).reshape(len(tr), -1)
    for v in np.asarray(va.clips).reshape(len(va), -1):
        assert not (flat_tr == v).all(axis=1).any()


def test_prefix_stable_when_more_clips_are_asked():
    """Clip i's scene depends only on (seed, split, i): a bigger split extends a smaller one's scenes."""
    a, b = small(n=12), small(n=30)
    for i in range(12):
        assert a.scene(i) == b.scene(i)


def test_labels_balanced():
    ds = small("train", n=60)
    assert np.bincount(ds.labels, minlength=4).tolist() == [15] * 4
    ds = small("train", n=62, classes=MOTIONS)
    counts = np.bincount(ds.labels, minlength=6)
    assert counts.sum() == 62 and counts.max() - counts.min() <= 1


def test_cache_written_reused_and_keyed_by_parameters(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENBENCH_CACHE", str(tmp_path))
    a = SyntheticMotion("val", num_clips=10, **SMALL)
    assert (a.cache_path / "clips.npy").is_file()
    assert json.loads((a.cache_path / "params.json").read_text())["num_clips"] == 10
    b = SyntheticMotion("val", num_clips=10, **SMALL)
    assert isinstance(b.clips, np.memmap)  # read back from disk, not regenerated
    np.testing.assert_array_equal(np.asarray(a.clips), np.asarray(b.clips))
    np.testing.assert_array_equal(np.asarray(b.clips), np.asarray(small(n=10).clips))
    c = SyntheticMotion("val", num_clips=10, static_share=0.9, camera_share=0.0, **SMALL)
    assert c.cache_path != a.cache_path
    # a damaged entry is rebuilt, not trusted (a new file: truncating a mapped one in place would SIGBUS
    # the readers; the cache itself only ever renames whole entries into place)
    expected = np.array(b.clips)
    del a, b
    (tmp_path / "garbage").write_bytes(b"garbage")
    (tmp_path / "garbage").replace(c.cache_path.parent / (SyntheticMotion("val", num_clips=10, cache=False, **SMALL)
                                                          .cache_path.name) / "clips.npy")
    d = SyntheticMotion("val", num_clips=10, **SMALL)
    np.testing.assert_array_equal(np.asarray(d.clips), expected)


def test_first_frame_does_not_depend_on_the_label():
    """A scene (background, objects, start states) is drawn independently of the label: rendered under every
    label, the first frame is the same image."""
    ds = small(n=12, classes=MOTIONS)
    for i in range(12):
        sc = ds.scene(i)
        frames = [ds.render_scene(sc, k, i) for k in range(ds.num_classes)]
        for f in frames[1:]:
            np.testing.assert_array_equal(f[0], frames[0][0])
        # ... and the clips do differ later on (the motion is there)
        assert all(not np.array_equal(f[-1], frames[0][-1]) for f in frames[1:])


@pytest.mark.parametrize("t", [3, 7])
def test_every_frame_is_equally_likely_under_every_label(t):
    """Frame t of a clip of one motion is exactly frame t of a clip of any other motion whose objects start
    elsewhere (position shifted on the torus, angle on the circle). Start states are uniform, so every
    frame's distribution is the same under every label: no single frame tells the label."""
    from tokenbench.datasets.synthetic_scene import _object_params

    ds = small(n=6, classes=MOTIONS)
    size = ds.img_size
    for i in range(6):
        sc = ds.scene(i)
        for a, b in [("left", "right"), ("up", "down"), ("right", "cw"), ("cw", "ccw"), ("down", "ccw")]:
            fa = ds.render_scene(sc, MOTIONS.index(a), i)[t]
            moved = []
            for obj in sc.objects:
                ya, xa, anga = _object_params(obj, a, t, size)
                yb, xb, angb = _object_params(obj, b, t, size)
                # the start state under b that puts this object where a put it at frame t
                moved.append(dataclasses.replace(obj, y0=(obj.y0 + ya - yb) % size, x0=(obj.x0 + xa - xb) % size,
                                                 angle0=obj.angle0 + anga - angb))
            fb = ds.render_scene(dataclasses.replace(sc, objects=tuple(moved)), MOTIONS.index(b), i)[t]
            differing = (fa != fb).any(-1).mean()
            assert differing < 0.003, (i, a, b, differing)  # equal up to a few rounding-edge pixels


def test_single_frame_classifier_is_at_chance():
    """A least-squares classifier on one frame's pixels (8×8 colour thumbnails) does no better than chance
    on held-out clips, for the first and the last frame."""
    tr, va = small("train", n=180), small("val", n=120)

    def feats(ds, t):
        x = torch.from_numpy(np.asarray(ds.clips)[:, t]).permute(0, 3, 1, 2).float() / 255
        x = torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1)
        return torch.cat([x, torch.ones(len(x), 1)], 1)

    for t in (0, 7):
        xtr, xva = feats(tr, t), feats(va, t)
        y = torch.nn.functional.one_hot(torch.from_numpy(tr.labels), tr.num_classes).float()
        w = torch.linalg.lstsq(xtr.T @ xtr + 1.0 * torch.eye(xtr.shape[1]), xtr.T @ y).solution
        acc = ((xva @ w).argmax(1).numpy() == va.labels).mean()
        assert acc < 1 / tr.num_classes + 0.12, (t, acc)


def test_backgrounds_are_cut_from_the_bundled_real_clips():
    paths = bundled_videos()
    assert {p.name for p in paths} >= {"bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4"}
    bgs = load_backgrounds(146)
    assert len(bgs) == len(paths) and all(b.dtype == np.uint8 and min(b.shape[1:3]) == 146 for b in bgs)
    ds = small(n=40, static_share=1.0, camera_share=0.0)
    for i in range(5):
        sc = ds.scene(i)
        clip = np.asarray(ds.clips[i])
        crop = bgs[sc.video][sc.frame0, sc.crop_y:sc.crop_y + 112, sc.crop_x:sc.crop_x + 112]
        # away from the object the static background is the source frame, in every frame
        same = (clip == crop[None]).all(-1).mean(axis=(1, 2))
        assert (same > 0.3).all()


def test_background_share_controls_rlt_token_counts():
    """Static backgrounds let RLT drop most tubelets; camera motion makes it keep nearly all of them."""
    from tokenbench.datasets.transforms import to_model_input
    from tokenbench.reducers import available_reducers, get_reducer

    if "rlt" not in available_reducers():
        pytest.skip("rlt reducer not installed")
    rlt = get_reducer("rlt", threshold=0.1)

    def mean_tokens(**kw):
        ds = small(n=24, **kw)
        sel = rlt.select(to_model_input(torch.from_numpy(np.asarray(ds.clips))))
        return sel.keep.reshape(len(ds), -1).sum(1).float().mean().item()

    total = 4 * 7 * 7
    static = mean_tokens(static_share=1.0, camera_share=0.0)
    mixed = mean_tokens(static_share=0.5, camera_share=0.25)
    camera = mean_tokens(static_share=0.0, camera_share=1.0)
    assert 49 <= static < 0.8 * total  # one run per cell, plus the cells the moving objects cross
    assert camera > 0.9 * total
    assert static + 10 < mixed < camera - 10
    # fewer, smaller objects over static backgrounds: RLT drops most of the clip
    sparse = mean_tokens(static_share=1.0, camera_share=0.0, num_objects=1, radius=(8.0, 10.0), speed=(2.0, 3.0))
    assert sparse < 0.45 * total


def test_bad_options_fail_clearly():
    with pytest.raises(ValueError, match="split"):
        SyntheticMotion("test", cache=False)
    with pytest.raises(ValueError, match="classes"):
        SyntheticMotion("val", num_clips=4, classes=["left", "spin"], cache=False)
    with pytest.raises(ValueError, match="static_share"):
        SyntheticMotion("val", num_clips=4, static_share=0.8, camera_share=0.5, cache=False)


def test_class_subset():
    ds = small(n=12, classes=("cw", "ccw"))
    assert ds.num_classes == 2 and set(ds.labels.tolist()) == {0, 1}
    assert {ds[i][2]["motion"] for i in range(12)} == {"cw", "ccw"}


def test_a_share_of_clips_is_faint_and_faint_objects_change_their_tubelets_less():
    """faint_share of the clips (label-independent: the scene decides) blend their objects at an opacity
    drawn from `contrast`; the rest are solid. A faint clip changes fewer pixels between frames than the same
    scene rendered solid — what makes it hard for a model and for RLT's change threshold."""
    ds = small(n=200, faint_share=0.5, contrast=(0.05, 0.4), static_share=1.0, camera_share=0.0)
    opacity = np.array([ds.scene(i).objects[0].contrast for i in range(len(ds))])
    faint = opacity < 1.0
    assert 0.4 < faint.mean() < 0.6
    assert ((opacity[faint] >= 0.05) & (opacity[faint] <= 0.4)).all()
    assert all(len({o.contrast for o in ds.scene(i).objects}) == 1 for i in range(20))  # one opacity a clip
    for i in np.flatnonzero(faint)[:5]:
        sc = ds.scene(int(i))
        solid = dataclasses.replace(sc, objects=tuple(dataclasses.replace(o, contrast=1.0) for o in sc.objects))
        change = [np.abs(np.diff(ds.render_scene(s, int(ds.labels[i]), int(i)).astype(np.int16), axis=0)).mean()
                  for s in (sc, solid)]
        assert change[0] < 0.6 * change[1], change


def test_no_faint_share_paints_every_object_solid():
    ds = small(n=40, faint_share=0.0)
    assert {o.contrast for i in range(len(ds)) for o in ds.scene(i).objects} == {1.0}
    with pytest.raises(ValueError, match="contrast"):
        small(n=2, contrast=(0.5, 0.2))
    with pytest.raises(ValueError, match="faint_share"):
        small(n=2, faint_share=1.5)
