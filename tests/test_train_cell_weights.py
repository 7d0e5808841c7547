"""A train cell's record names the weights it started from beside the ones it trained, and the report
compares its arms by the former."""
from __future__ import annotations

from conftest import seeded_model, suite_toml, write_file

from tokenbench.harness.checkpoint import save_checkpoint, weights_sha256
from tokenbench.harness.report.records import Record, checkpoint_of
from tokenbench.harness.run import RunCache, run_cell
from tokenbench.harness.suite import load_suite

SUITE = suite_toml(
    "init",
    defaults={"modes": ["train"], "batch_sizes": [4], "repeats": None, "warmup": None, "time_clips": None},
    train={"init": "checkpoint", "epochs": 1, "batch_size": 4, "max_clips": 4, "warmup_epochs": 0,
           "amp": False},
    model={"num_frames": 4, "img_size": 32, "checkpoint": "CKPT"},
    datasets=({"name": "synthetic", "max_clips": 4, "options": {"num_clips": 4}},))


def test_train_record_names_the_weights_it_started_from(tmp_path):
    model = seeded_model(num_classes=4, num_frames=4, img_size=32)
    start = weights_sha256(model.state_dict())
    ckpt = save_checkpoint(model, tmp_path / "start.pth")
    cell = load_suite(write_file(tmp_path, "s.toml", SUITE.replace("CKPT", str(ckpt)))).cells()[0]
    rec = run_cell(cell, suite="init", cache=RunCache(cache_dir=tmp_path))
    assert rec["status"] == "ok", rec["error"]
    c = rec["cell"]
    assert c["init_checkpoint_sha256"] == start and c["init_checkpoint_path"] == str(ckpt)
    assert len(c["checkpoint_sha256"]) == 64 and c["checkpoint_sha256"] != start  # the trained weights
    # the report compares a train record by the weights it started from, as an inference record on them
    trained = Record.of(rec)
    assert trained.mode == "train" and checkpoint_of(trained) == f"sha256:{start}"
    on_start = Record.of({"cell": {"mode": "inference", "checkpoint_sha256": start}})
    assert checkpoint_of(on_start) == checkpoint_of(trained)
