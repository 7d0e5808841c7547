"""Manifests and the Kinetics / SSv2 converters, end to end on tiny trees of real video files written
with PyAV here: the expected frames and labels come out, and bad lines or files are named."""
from __future__ import annotations

import json

import pytest
import torch

from tokenbench.datasets import (
    ManifestDataset,
    ManifestError,
    UnknownDatasetError,
    VideoDecodeError,
    get_dataset,
    kinetics_csv_to_manifest,
    read_label_list,
    read_manifest,
    ssv2_json_to_manifest,
)
from tokenbench.datasets.decode import colour_bars, frame_number, write_video

SIZE = 64  # videos are written at 64×64 and read at 64×64: the spatial transform is the identity,
#            so the frame number painted into each frame can be read back from the clip
CLASSES = ["zumba", "abseiling", "juggling balls"]  # a label list, deliberately not alphabetical
ROWS = [  # label, youtube_id, start, end, frames
    ("abseiling", "0wR5jVB-WPk", 417, 427, 80),
    ("juggling balls", "-aBcD_eFgHi", 3, 13, 70),
    ("zumba", "zyQ4dU9aX4U", 1, 11, 20),  # shorter than a 8×4 window: the last frame repeats
    ("abseiling", "Qq8j1x2VvWk", 120, 130, 90),
]


def frames_of(clip: torch.Tensor) -> list[int]:
    return [frame_number(f) for f in clip.numpy()]


@pytest.fixture(scope="module")
def kinetics(tmp_path_factory):
    """<root>/<class name>/<id>_<start:06d>_<end:06d>.mp4 (the ActivityNet crawler's layout), the official
    CSV columns, and a label list."""
    root = tmp_path_factory.mktemp("k400")
    videos = root / "val"
    for label, yid, s, e, n in ROWS:
        write_video(videos / label / f"{yid}_{s:06d}_{e:06d}.mp4", colour_bars(n, SIZE, SIZE), codec="libx264",
                    gop=16)
    csv = root / "validate.csv"
    quote = '"'  # the official CSVs quote class names that hold spaces
    csv.write_text("label,youtube_id,time_start,time_end,split\n" + "".join(
        f"{quote + label + quote if ' ' in label else label},{yid},{s},{e},validate\n"
        for label, yid, s, e, _ in ROWS))
    labels = root / "labels.txt"
    labels.write_text("\n".join(CLASSES) + "\n")
    return root, videos, csv, labels


def test_kinetics_tree_loads_through_converter_and_manifest(kinetics, tmp_path):
    root, videos, csv, labels = kinetics
    conv = kinetics_csv_to_manifest(csv, tmp_path / "val.txt", classes=labels, video_root=videos)
    assert conv.missing == [] and conv.classes == CLASSES
    lines = (tmp_path / "val.txt").read_text().splitlines()
    assert lines == ["abseiling/0wR5jVB-WPk_000417_000427.mp4 1", "juggling balls/-aBcD_eFgHi_000003_000013.mp4 2",
                     "zumba/zyQ4dU9aX4U_000001_000011.mp4 0", "abseiling/Qq8j1x2VvWk_000120_000130.mp4 1"]

    ds = ManifestDataset(tmp_path / "val.txt", videos, classes=labels, num_frames=8, img_size=SIZE, stride=4)
    assert len(ds) == 4 and ds.num_classes == 3 and ds.classes == CLASSES
    for i, (_, _, _, _, n) in enumerate(ROWS):
        clip, label, meta = ds[i]
        assert clip.shape == (8, SIZE, SIZE, 3) and clip.dtype == torch.uint8
        assert label == CLASSES.index(ROWS[i][0]) and meta["line"] == i + 1
        got = frames_of(clip)
        assert got == meta["frame_indices"]  # the clip holds exactly the frames the sampler chose
        start = got[0]
        expect = [min(start + 4 * k, n - 1) for k in range(8)]
        assert got == expect and 0 <= start <= max(n - 29, 0)
    assert frames_of(ds[2][0]) == [0, 4, 8, 12, 16, 19, 19, 19]  # 20-frame video: padded with its last frame


def test_same_clip_and_seed_give_same_frames(kinetics, tmp_path):
    root, videos, csv, labels = kinetics
    kinetics_csv_to_manifest(csv, tmp_path / "val.txt", classes=labels, video_root=videos)
    a = ManifestDataset(tmp_path / "val.txt", videos, num_frames=8, img_size=SIZE, seed=0)
    b = ManifestDataset(tmp_path / "val.txt", videos, num_frames=8, img_size=SIZE, seed=0)
    assert all(torch.equal(a[i][0], b[i][0]) for i in range(len(a)))
    starts = {s: frames_of(ManifestDataset(tmp_path / "val.txt", videos, num_frames=8, img_size=SIZE,
                                           seed=s)[3][0])[0] for s in range(6)}
    assert len(set(starts.values())) > 1  # the seed moves the window


def test_default_classes_are_sorted_and_layout_detected(kinetics, tmp_path):
    root, videos, csv, _ = kinetics
    conv = kinetics_csv_to_manifest(csv, video_root=videos)
    assert conv.classes == ["abseiling", "juggling balls", "zumba"]
    assert [label for _, label in conv.rows] == [0, 1, 2, 0]
    flat = kinetics_csv_to_manifest(csv, layout="flat")
    assert flat.rows[0] == ("0wR5jVB-WPk_000417_000427.mp4", 0)
    missing = kinetics_csv_to_manifest(csv, video_root=videos, layout="flat")
    assert len(missing.missing) == 4  # a flat layout does not match this tree


def test_get_dataset_reads_the_csv_directly(kinetics):
    root, videos, csv, labels = kinetics
    ds = get_dataset("kinetics", num_frames=8, img_size=SIZE, csv=csv, root=videos, classes=labels)
    clip, label, meta = ds[1]
    assert label == 2 and meta["line"] == 3  # CSV line 3 (after the header)
    assert ds.info()["manifest"] == str(csv) and ds.info()["views"] == "1x1"


def test_missing_and_corrupt_files_name_file_and_line(kinetics, tmp_path):
    root, videos, csv, labels = kinetics
    good = videos / "abseiling" / "0wR5jVB-WPk_000417_000427.mp4"
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(good.read_bytes()[:3000])  # truncated
    manifest = tmp_path / "m.txt"
    manifest.write_text(f"# header comment\n{good} 0\n\nnot_there.mp4 1\n{cut} 2\n")
    ds = ManifestDataset(manifest, tmp_path, num_frames=8, img_size=SIZE)
    assert len(ds) == 3 and [e.path.name for e in ds.missing()] == ["not_there.mp4"]
    ds[0]
    with pytest.raises(VideoDecodeError) as err:
        ds[1]
    assert err.value.line == 4 and err.value.manifest == str(manifest)
    assert str(tmp_path / "not_there.mp4") in str(err.value) and "line 4" in str(err.value)
    with pytest.raises(VideoDecodeError) as err:
        ds[2]
    assert err.value.line == 5 and str(cut) in str(err.value) and "line 5" in str(err.value)


@pytest.mark.parametrize("line, why", [("video.mp4", "expected 'PATH LABEL'"), ("video.mp4 cat", "not an integer"),
                                       ("video.mp4 -4", "negative")])
def test_malformed_lines_name_the_line(tmp_path, line, why):
    m = tmp_path / "bad.txt"
    m.write_text(f"a.mp4 0\n{line}\n")
    with pytest.raises(ManifestError, match=why) as err:
        read_manifest(m)
    assert err.value.line == 2 and f"{m}, line 2" in str(err.value)


def test_manifest_paths_root_and_spaces(tmp_path):
    m = tmp_path / "list.txt"
    m.write_text("my videos/a b.mp4 3\n/abs/c.mp4 -1\n")
    e = read_manifest(m)
    assert e[0].path == tmp_path / "my videos" / "a b.mp4" and e[0].label == 3
    assert e[1].path.as_posix() == "/abs/c.mp4" and e[1].label == -1
    assert read_manifest(m, root="/data")[0].path.as_posix() == "/data/my videos/a b.mp4"
    with pytest.raises(ManifestError, match="lists no video"):
        (tmp_path / "empty.txt").write_text("# nothing\n")
        read_manifest(tmp_path / "empty.txt")
    with pytest.raises(ManifestError, match="label 3"):
        ManifestDataset(m, classes=["a", "b"])


def test_label_list_formats(tmp_path):
    (tmp_path / "a.txt").write_text("zumba\nabseiling\n")
    (tmp_path / "b.csv").write_text("id,name\n1,abseiling\n0,zumba\n")
    (tmp_path / "c.json").write_text(json.dumps({"abseiling": 1, "zumba": "0"}))
    for f in ("a.txt", "b.csv", "c.json"):
        assert read_label_list(tmp_path / f) == ["zumba", "abseiling"]
    # a damaged or wrongly shaped JSON label file is named, with the line of a syntax error
    (tmp_path / "bad.json").write_text('{\n  "zumba": 0,\n  oops\n}')
    with pytest.raises(ManifestError, match=r"bad\.json, line 3: not valid JSON"):
        read_label_list(tmp_path / "bad.json")
    (tmp_path / "num.json").write_text("7")
    with pytest.raises(ManifestError, match=r"num\.json: expected a JSON list of class names"):
        read_label_list(tmp_path / "num.json")


@pytest.fixture(scope="module")
def ssv2(tmp_path_factory):
    root = tmp_path_factory.mktemp("ssv2")
    (root / "labels.json").write_text(json.dumps({
        "Approaching something with your camera": "0",
        "Putting something on a surface": "1",
        "Pushing something from left to right": "2",
    }))
    (root / "train.json").write_text(json.dumps([
        {"id": "78687", "label": "putting a cup on a table", "template": "Putting [something] on a surface",
         "placeholders": ["a cup"]},
        {"id": "42326", "label": "pushing pen from left to right",
         "template": "Pushing [something] from left to right", "placeholders": ["pen"]},
        {"id": "100", "label": "approaching door with your camera",
         "template": "Approaching [something] with your camera", "placeholders": ["door"]},
    ]))
    (root / "test.json").write_text(json.dumps([{"id": "1420"}]))
    videos = root / "20bn-something-something-v2"
    for vid, n in (("78687", 40), ("42326", 48), ("100", 12)):
        write_video(videos / f"{vid}.webm", colour_bars(n, SIZE, SIZE), codec="libvpx", gop=10)
    return root, videos


def test_ssv2_json_conversion(ssv2, tmp_path):
    root, videos = ssv2
    conv = ssv2_json_to_manifest(root / "labels.json", root / "train.json", tmp_path / "train.txt",
                                 video_root=videos)
    assert conv.classes == ["Approaching something with your camera", "Putting something on a surface",
                            "Pushing something from left to right"]
    assert conv.rows == [("78687.webm", 1), ("42326.webm", 2), ("100.webm", 0)] and conv.missing == []
    assert (tmp_path / "train.txt").read_text() == "78687.webm 1\n42326.webm 2\n100.webm 0\n"
    test = ssv2_json_to_manifest(root / "labels.json", root / "test.json", video_root=videos)
    assert test.rows == [("1420.webm", -1)] and test.missing == ["1420.webm"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": "1", "template": "Spinning [something]"}]))
    with pytest.raises(ManifestError, match="Spinning something"):
        ssv2_json_to_manifest(root / "labels.json", bad)


def test_ssv2_dataset_takes_segment_middles(ssv2):
    root, videos = ssv2
    ds = get_dataset("ssv2", num_frames=8, img_size=SIZE, labels_json=root / "labels.json",
                     split_json=root / "train.json", root=videos)
    assert ds.sampling == "segment" and ds.num_classes == 3 and not ds.flip
    clip, label, meta = ds[0]
    assert label == 1 and frames_of(clip) == [2, 7, 12, 17, 22, 27, 32, 37]  # 40 frames, 8 segments of 5
    assert frames_of(ds[2][0]) == [0, 2, 3, 5, 6, 8, 9, 11]  # 12 frames: 8 segments of 1.5
    two = get_dataset("ssv2", num_frames=8, img_size=SIZE, labels_json=root / "labels.json",
                      split_json=root / "train.json", root=videos, num_clips=2)
    assert len(two) == 6 and frames_of(two[1][0]) == [0, 5, 10, 15, 20, 25, 30, 35]  # second view: starts


def test_views_and_training_mode(kinetics, tmp_path):
    root, videos, csv, labels = kinetics
    kinetics_csv_to_manifest(csv, tmp_path / "val.txt", classes=labels, video_root=videos)
    views = ManifestDataset(tmp_path / "val.txt", videos, num_frames=8, img_size=48, num_clips=2, num_crops=3)
    assert len(views) == 24 and views.info()["views"] == "2x3"
    _, _, meta = views[7]
    assert (meta["video_index"], meta["clip_index"], meta["crop_index"]) == (1, 0, 1)
    first, last = views[0][2]["frame_indices"], views[3][2]["frame_indices"]
    assert first[0] == 0 and last[-1] == 79  # two evenly spaced windows span the 80-frame video
    train = ManifestDataset(tmp_path / "val.txt", videos, split="train", num_frames=8, img_size=32, seed=1)
    assert len(train) == 4
    a, b = train[0][0], train[0][0]
    assert torch.equal(a, b) and a.shape == (8, 32, 32, 3)
    epoch0 = [train[i][0] for i in range(4)]
    train.set_epoch(1)
    epoch1 = [train[i][0] for i in range(4)]
    assert any(not torch.equal(x, y) for x, y in zip(epoch0, epoch1))  # new crops / windows each epoch
    starts = {ManifestDataset(tmp_path / "val.txt", videos, split="train", num_frames=8, img_size=32,
                              seed=s)[3][2]["frame_indices"][0] for s in range(6)}
    assert len(starts) > 1


def test_get_dataset_errors():
    with pytest.raises(UnknownDatasetError, match="kinetics, manifest, samples, ssv2, synthetic"):
        get_dataset("imagenet")
    with pytest.raises(ValueError, match="manifest=PATH"):
        get_dataset("kinetics")
