"""``tokenbench tokens``: per-clip RLT token counts and the per-dataset table, on real encoded videos."""
from __future__ import annotations

import json

import pytest

from tokenbench.datasets import VideoFilesDataset, load_clips, to_model_input
from tokenbench.datasets.decode import colour_bars, write_video
from tokenbench.harness.cli import main
from tokenbench.reducers import get_reducer


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    return {
        "static": write_video(d / "static.mp4", colour_bars(24, 64, 64, static=True)),
        "moving": write_video(d / "moving.mp4", colour_bars(24, 64, 64, speed=3)),
    }


def tokens_json(capsys, *argv) -> dict:
    assert main(["tokens", *argv, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_static_video_keeps_one_token_per_cell(clips, capsys):
    out = tokens_json(capsys, str(clips["static"]), "--frames", "8", "--size", "64", "--stride", "2",
                      "--threshold", "0.05,0.1,0.2")
    (clip,) = out["clips"]
    assert clip["total"] == 4 * 4 * 4  # 8 frames × 64² in 2×16×16 tubelets
    assert clip["kept"] == {"0.05": 16, "0.1": 16, "0.2": 16}  # only the first tubelet of each cell
    assert [s["reduction"] for s in out["summary"]] == [4.0, 4.0, 4.0]


def test_counts_match_the_reducer_and_repeat_exactly(clips, capsys):
    argv = [str(clips["moving"]), str(clips["static"]), "--frames", "8", "--size", "64", "--stride", "2",
            "--threshold", "0.05,0.2", "--windows", "2"]
    first, second = tokens_json(capsys, *argv), tokens_json(capsys, *argv)
    assert first["clips"] == second["clips"]  # same clips, same seed: same tokens on every run
    ds = VideoFilesDataset([clips["moving"], clips["static"]], num_frames=8, img_size=64, stride=2, windows=2)
    x = to_model_input(load_clips(ds).clips)
    for tau in (0.05, 0.2):
        direct = get_reducer("rlt", threshold=tau).select(x).keep.flatten(1).sum(1).tolist()
        assert [c["kept"][str(tau)] for c in first["clips"]] == direct
    moving = [c["kept"]["0.05"] for c in first["clips"][:2]]
    assert all(16 < k <= 64 for k in moving)  # moving bars change most tubelets
    assert all(c["kept"]["0.2"] <= c["kept"]["0.05"] for c in first["clips"])  # higher τ keeps fewer
    s = first["summary"][0]
    kept = [c["kept"]["0.05"] for c in first["clips"]]
    assert (s["clips"], s["min"], s["max"]) == (4, min(kept), max(kept))
    assert s["mean"] == pytest.approx(sum(kept) / 4) and s["reduction"] == pytest.approx(64 / s["mean"])


def test_table_output_on_the_bundled_samples(capsys):
    rc = main(["tokens", "--dataset", "samples", "--frames", "8", "--size", "64", "--windows", "2",
               "-o", "videos=['carphone_distorted']", "--threshold", "0.1,0.2"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "dataset samples (val) · 2 clips · 8×64² · stride 4" in out and "64 tokens/clip" in out
    assert "carphone_distorted.mp4#0" in out and "carphone_distorted.mp4#1" in out
    summary = out.split("reduction = tokens ÷ mean kept")[1].splitlines()
    assert summary[2].split()[0] == "0.1" and summary[3].split()[0] == "0.2"
    assert summary[2].split()[-1].endswith("×")


def test_unreadable_video_is_reported_and_skipped(clips, tmp_path, capsys):
    missing = tmp_path / "gone.mp4"
    rc = main(["tokens", str(clips["static"]), str(missing), "--frames", "8", "--size", "64"])
    cap = capsys.readouterr()
    assert rc == 1
    assert str(missing) in cap.err and "static.mp4" in cap.out


@pytest.mark.parametrize("argv, message", [
    (["--threshold", "abc"], "not a number"),
    (["--threshold", "-1"], "≥ 0"),
    (["--frames", "7"], "--frames must be even"),
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
])
def test_bad_arguments_fail_clearly(capsys, argv, message):
    assert main(["tokens", *argv]) == 2
    assert message in capsys.readouterr().err
