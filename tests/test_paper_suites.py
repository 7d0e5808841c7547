"""The paper suites end to end (issue 14, item 6): ``tokenbench run --suite paper-k400`` / ``paper-ssv2`` on
a tiny dataset tree in each official format (Kinetics: class folders of ``<id>_<start>_<end>.mp4`` and the
official CSV, converted to a manifest; SSv2: ``<id>.webm`` and its labels/validation JSON), with a
random-weights transformers checkpoint directory, at the suites' own 16×224² geometry. The model entry is
renamed to ``vit_t`` (its id stays ``vit_b``) so a CPU runs it; views, clips and repeats are cut with
``--set``. The default run measures one reducer per suite; the whole suites are ``slow``.
"""
from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import VideoMAEConfig, VideoMAEForVideoClassification

from tokenbench.datasets import kinetics_csv_to_manifest, ssv2_json_to_manifest, write_video
from tokenbench.datasets.decode import colour_bars
from tokenbench.harness.checkpoint import read_checkpoint
from tokenbench.harness.cli import main


def _checkpoint(path: Path, num_labels: int) -> Path:
    """A transformers VideoMAE directory at vit_t's width/depth/heads and the suites' 16×224²."""
    cfg = VideoMAEConfig(image_size=224, num_frames=16, hidden_size=192, num_hidden_layers=12,
                         num_attention_heads=3, intermediate_size=768, num_labels=num_labels)
    torch.manual_seed(0)
    VideoMAEForVideoClassification(cfg).save_pretrained(path)
    return path


def _frames(i: int) -> np.ndarray:
    """40 frames of 64×96: sliding colour bars, or still ones (RLT then keeps few tokens)."""
    return colour_bars(40, 64, 96, speed=1 + i, static=i == 0)


@pytest.fixture(scope="module")
def k400(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("k400")
    rows = [("abseiling", "0wR5jVB-WPk", 417, 427), ("zumba", "zyQ4dU9aX4U", 1, 11), ("zumba", "a-b_c-d_e-f", 30, 40)]
    for i, (label, yid, start, end) in enumerate(rows):  # the crawler's layout: one folder per class
        write_video(root / "val" / label / f"{yid}_{start:06d}_{end:06d}.mp4", _frames(i), gop=8)
    with open(root / "validate.csv", "w", newline="") as f:  # the official CSV's columns
        w = csv.writer(f)
        w.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
        w.writerows([(label, yid, start, end, "val") for label, yid, start, end in rows])
    conv = kinetics_csv_to_manifest(root / "validate.csv", root / "val.txt", video_root=root / "val")
    assert conv.missing == [] and len(conv.rows) == 3
    return {"manifest": root / "val.txt", "root": root / "val", "checkpoint": _checkpoint(root / "ckpt", 400)}


@pytest.fixture(scope="module")
def ssv2(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ssv2")
    templates = ["Pushing something from left to right", "Holding something next to something"]
    (root / "labels.json").write_text(json.dumps({t: str(i) for i, t in enumerate(templates)}))
    items = [{"id": "78687", "label": "pushing a cup from left to right",
              "template": "Pushing [something] from left to right", "placeholders": ["a cup"]},
             {"id": "42326", "label": "holding a pen next to a book",
              "template": "Holding [something] next to [something]", "placeholders": ["a pen", "a book"]}]
    (root / "validation.json").write_text(json.dumps(items))
    for i, item in enumerate(items):
        write_video(root / "videos" / f"{item['id']}.webm", _frames(i + 1), codec="libvpx", gop=8)
    conv = ssv2_json_to_manifest(root / "labels.json", root / "validation.json", root / "val.txt",
                                 video_root=root / "videos")
    assert conv.missing == [] and [r[1] for r in conv.rows] == [0, 1]
    return {"manifest": root / "val.txt", "root": root / "videos", "checkpoint": _checkpoint(root / "ckpt", 174)}


def _run(tmp_path, monkeypatch, suite: str, data_id: str, tree: dict[str, Path], *only: str) -> list[dict]:
    monkeypatch.chdir(tmp_path)  # the report goes to ./reports/<suite>
    monkeypatch.setenv("TOKENBENCH_CACHE", str(tmp_path / "cache"))
    argv = ["run", "--suite", suite, "--out", str(tmp_path / "results"), "--only", "model=vit_b",
            "--set", "models.vit_b.id=vit_b", "--set", "models.vit_b.name=vit_t",
            "--set", f"models.vit_b.checkpoint={tree['checkpoint']}",
            "--set", f"datasets.{data_id}.manifest={tree['manifest']}",
            "--set", f"datasets.{data_id}.root={tree['root']}",
            "--set", f"datasets.{data_id}.views=1x1", "--set", "defaults.repeats=1", "--set", "defaults.warmup=0",
            "--set", "defaults.time_clips=2", "--set", "defaults.batch_sizes=[2]"]
    for o in only:
        argv += ["--only", o]
    assert main(argv) == 0
    (store,) = (tmp_path / "results" / suite).glob("*/records.jsonl")
    return [json.loads(line) for line in store.read_text().splitlines()]


def _check(records: list[dict], tree: dict[str, Path], tmp_path: Path, suite: str, videos: int) -> None:
    sha = read_checkpoint(tree["checkpoint"]).sha256
    for r in records:
        assert r["status"] == "ok", r["error"]
        cell, m = r["cell"], r["metrics"]
        assert cell["checkpoint"] == str(tree["checkpoint"]) and cell["checkpoint_sha256"] == sha
        assert (cell["model"], cell["num_frames"], cell["img_size"]) == ("vit_t", 16, 224)
        assert m["num_videos"] == videos and m["tokens_total"] == 1568
        assert 0 < m["tokens_in_mean"] <= 1568 and m["gflops"] > 0 and m["time_ms_median"] > 0
    readme = (tmp_path / "reports" / suite / "README.md").read_text()
    assert f"`{sha[:12]}`" in readme and str(tree["checkpoint"]) in readme  # checkpoints named by hash


def test_paper_k400_end_to_end_one_reducer(k400, tmp_path, monkeypatch):
    records = _run(tmp_path, monkeypatch, "paper-k400", "k400", k400, "label=rlt τ=0.1")
    assert [r["cell"]["label"] for r in records] == ["rlt τ=0.1"]
    _check(records, k400, tmp_path, "paper-k400", videos=3)
    cell = records[0]["cell"]
    assert cell["dataset"] == "kinetics" and cell["dataset_options"]["sampling"] == "kinetics"
    assert cell["num_classes"] == 400
    m = records[0]["metrics"]
    assert m["tokens_in_min"] < m["tokens_in_max"]  # a still video and moving ones: RLT's counts differ


@pytest.mark.slow  # the same path as k400's end-to-end test, on the other manifest layout
def test_paper_ssv2_end_to_end_one_reducer(ssv2, tmp_path, monkeypatch):
    records = _run(tmp_path, monkeypatch, "paper-ssv2", "ssv2", ssv2, "label=rlt τ=0.1")
    _check(records, ssv2, tmp_path, "paper-ssv2", videos=2)
    assert records[0]["cell"]["dataset_options"]["sampling"] == "segment" and records[0]["cell"]["num_classes"] == 174


@pytest.mark.slow
@pytest.mark.parametrize("suite,data_id,fixture,videos", [("paper-k400", "k400", "k400", 3),
                                                          ("paper-ssv2", "ssv2", "ssv2", 2)])
def test_paper_suite_end_to_end_every_reducer(suite, data_id, fixture, videos, tmp_path, monkeypatch, request):
    tree = request.getfixturevalue(fixture)
    records = _run(tmp_path, monkeypatch, suite, data_id, tree)
    # the budget curves (tests/test_suite_builtin.py has the design): none, RLT × 5 τ, random at each τ and at
    # 4 keep fractions, ToMe × 4, STA × 4
    assert Counter(r["cell"]["reducer"] for r in records) == {"none": 1, "rlt": 5, "random": 9, "tome": 4, "sta": 4}
    _check(records, tree, tmp_path, suite, videos)


def test_a_checkpoint_that_does_not_fit_the_suite_is_refused_before_any_work(k400, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc = main(["run", "--suite", "paper-k400", "--out", str(tmp_path / "results"), "--only", "model=vit_b",
               "--set", f"models.vit_b.checkpoint={k400['checkpoint']}",
               "--set", f"datasets.k400.manifest={k400['manifest']}", "--set", f"datasets.k400.root={k400['root']}"])
    err = capsys.readouterr().err
    assert rc == 2
    assert ("config.json does not fit vit_b (16×224², 400 classes): hidden_size (width): checkpoint 192, "
            "model 768") in err
    assert not (tmp_path / "results").exists()
