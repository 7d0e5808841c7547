"""harness.train_compare: the training table's arms run on the same data and leave a reproducible record."""
from __future__ import annotations

import json

from tokenbench.harness import train_compare


def test_two_arms_recorded_with_command_and_fingerprint(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TOKENBENCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "cmp.json"
    args = ["--data", "num_clips=16", "--img-size", "64", "--epochs", "1", "--batch-size", "8",
            "--warmup-epochs", "0", "--threads", "1", "--out", str(out)]
    assert train_compare.main(args) == 0

    rec = json.loads(out.read_text())
    assert rec["command"] == "python -m tokenbench.harness.train_compare " + " ".join(args)
    assert rec["fingerprint"]["device"] == "cpu" and rec["fingerprint"]["cpu_model"]
    none, rlt = rec["rows"]
    assert (none["arm"], rlt["arm"]) == ("none", "rlt threshold=0.1")
    assert none["clips"] == rlt["clips"] == 16 and none["amp"] is False
    assert none["tokens_mean"] == 64.0  # 8 frames × 64²: 4 × 4 × 4 tubelets
    assert rlt["tokens_mean"] < none["tokens_mean"]  # the synthetic clips have static background
    assert 0 <= rlt["top1"] <= 100 and rlt["wall_s"] > 0
    printed = capsys.readouterr().out
    assert "| none |" in printed and "| rlt threshold=0.1 |" in printed
