"""Decoding: exact frames by index (seek path = full decode), the frame count of every container we
meet (mp4, avi, webm without a frame count in its header), and corrupt / missing files."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from tokenbench.datasets.decode import (
    VideoDecodeError,
    VideoReader,
    available_decoders,
    colour_bars,
    decoder_info,
    frame_number,
    probe_video,
    read_frames,
    read_video,
    resolve_decoder,
    write_video,
)

N = 40


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    frames = colour_bars(N, 48, 64)
    return {
        "mp4": write_video(d / "bars.mp4", frames, codec="libx264", gop=8),
        "avi": write_video(d / "bars.avi", frames, codec="mpeg4", gop=8),
        "webm": write_video(d / "bars.webm", frames, codec="libvpx", gop=8),
    }


@pytest.mark.parametrize("kind", ["mp4", "avi", "webm"])
def test_frame_count_and_exact_frames(videos, kind):
    path = videos[kind]
    info = probe_video(path, decoder="pyav")
    assert info.num_frames == N and info.width == 64 and info.height == 48
    assert info.fps == pytest.approx(25.0)
    full = read_video(path, decoder="pyav")
    assert full.shape == (N, 48, 64, 3) and full.dtype == np.uint8
    assert [frame_number(f) for f in full] == list(range(N))
    with VideoReader(path, decoder="pyav") as v:
        for idx in ([0, 4, 8], [33, 35, 39], [17, 17, 9], [20], [38, 39, 41, 100]):
            got = v.get_frames(idx)
            want = np.minimum(idx, N - 1)  # past the end: the last frame repeats
            assert [frame_number(f) for f in got] == want.tolist()
            # decoding from a keyframe in the middle gives the very same pixels as decoding everything
            np.testing.assert_array_equal(got, full[want])


def test_seek_path_decodes_only_from_the_nearest_keyframe(videos):
    with VideoReader(videos["mp4"], decoder="pyav") as v:
        assert v._impl.key_index == [0, 8, 16, 24, 32]  # gop=8 keyframes, seen from packets alone
        got = v.get_frames([30, 31])
    assert [frame_number(f) for f in got] == [30, 31]


def test_bundled_clip_with_irregular_keyframes():
    from tokenbench.datasets.samples import sample_paths

    path = sample_paths()["bikes"]  # 250 frames, keyframes at 0, 30, 76, 137, 187, 242
    with VideoReader(path, decoder="pyav") as v:
        assert v.num_frames == 250
        late = v.get_frames([140, 144, 148])
    first = read_video(path, max_frames=149, decoder="pyav")
    np.testing.assert_array_equal(late, first[[140, 144, 148]])


def test_read_frames_and_max_frames(videos):
    assert read_video(videos["mp4"], max_frames=5).shape[0] == 5
    got = read_frames(videos["avi"], [3, 1])
    assert [frame_number(f) for f in got] == [3, 1]


def test_missing_file_names_it(tmp_path):
    missing = tmp_path / "nope.mp4"
    with pytest.raises(VideoDecodeError) as err:
        read_video(missing)
    assert str(missing) in str(err.value) and err.value.path == str(missing)
    assert "no such file" in str(err.value)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_file_names_it(videos, tmp_path, damage):
    data = videos["mp4"].read_bytes()
    bad = tmp_path / f"{damage}.mp4"
    bad.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x00junk" * 500, "empty": b""}[damage])
    with pytest.raises(VideoDecodeError) as err:
        with VideoReader(bad) as v:
            v.get_frames([0, 1])
    assert str(bad) in str(err.value)


def test_truncated_stream_with_index_first_names_the_file(tmp_path):
    # moov first: the file still opens and lists 40 frames, but the tail of the data is gone
    path = write_video(tmp_path / "fs.mp4", colour_bars(N, 48, 64), faststart=True)
    data = path.read_bytes()
    bad = tmp_path / "cut.mp4"
    bad.write_bytes(data[: int(len(data) * 0.8)])
    with pytest.raises(VideoDecodeError) as err:
        read_video(bad)
    assert str(bad) in str(err.value)
    with pytest.raises(VideoDecodeError, match="truncated: the container declares 40 frames but only"):
        VideoReader(bad)  # not even the frames that survive: the file would be measured as a shorter video


def test_error_location_and_pickling():
    e = VideoDecodeError("a.mp4", "boom").at("val.txt", 7)
    assert (e.path, e.manifest, e.line) == ("a.mp4", "val.txt", 7)
    assert str(e) == "cannot decode a.mp4 (listed in val.txt, line 7): boom"
    e2 = pickle.loads(pickle.dumps(e))  # crosses DataLoader worker processes intact
    assert (e2.path, e2.manifest, e2.line, str(e2)) == (e.path, e.manifest, e.line, str(e))


def test_decoder_choice_and_info():
    info = decoder_info("pyav")
    assert info["decoder"] == "pyav" and info["decoder_version"] and info["ffmpeg"].startswith("libavcodec")
    assert decoder_info()["decoder"] == available_decoders()[0] == resolve_decoder("auto")
    with pytest.raises(ValueError, match="unknown decoder"):
        resolve_decoder("opencv")
    if "torchcodec" not in available_decoders():
        with pytest.raises(ValueError, match="torchcodec"):
            resolve_decoder("torchcodec")


@pytest.mark.skipif("torchcodec" not in available_decoders(), reason="torchcodec not installed")
def test_torchcodec_matches_pyav(videos):
    for kind in ("mp4", "webm"):
        with VideoReader(videos[kind], "torchcodec") as tc, VideoReader(videos[kind], "pyav") as av:
            assert tc.num_frames == av.num_frames == N
            idx = [0, 9, 27, 39, 45]
            a, b = tc.get_frames(idx), av.get_frames(idx)
            assert [frame_number(f) for f in a] == [frame_number(f) for f in b]


def test_write_video_rejects_bad_frames(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "x.mp4", np.zeros((2, 32, 32, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "x.mp4", np.zeros((2, 33, 32, 3), dtype=np.uint8))
