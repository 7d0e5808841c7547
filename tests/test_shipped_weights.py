"""The default model's shipped weights: the file is what its recipe records, the run path loads it for the
recipe that made it and trains anything else, and the recipe still learns on the CPU float32 path."""
from __future__ import annotations

import json
import math

import pytest
import torch

from tokenbench.datasets import synthetic
from tokenbench.harness.checkpoint import read_checkpoint, weights_sha256
from tokenbench.harness.model import build_model
from tokenbench.harness.run import RunCache
from tokenbench.harness.run.models import pretrained_path, train_pretrained
from tokenbench.harness.shipped_weights import (
    WEIGHTS_DIR,
    ShippedWeights,
    file_sha256,
    shipped_checkpoint,
    weights_identity,
    write_shipped,
)
from tokenbench.harness.suite import load_suite


def default_pretrain() -> dict:
    return load_suite("default").models[0].pretrain_config()


def test_shipped_file_is_the_one_its_recipe_records_and_the_default_suite_asks_for():
    shipped = ShippedWeights.of(default_pretrain())
    recipe = json.loads(shipped.recipe_path.read_text())
    assert shipped.path.stat().st_size <= 25 * 2**20
    assert file_sha256(shipped.path) == recipe["file_sha256"]
    ck = read_checkpoint(shipped.path)
    assert ck.sha256 == recipe["weights_sha256"]  # what records carry as checkpoint_sha256
    assert {str(t.dtype) for t in ck.state.values()} == {"torch.float32"}
    assert recipe["identity"] == weights_identity(default_pretrain())
    assert recipe["identity"]["recipe"]["amp"] is False  # float32 training: the same on every CPU
    assert recipe["identity"]["data"]["version"] == synthetic.GENERATOR_VERSION
    assert shipped_checkpoint(default_pretrain()) == WEIGHTS_DIR / "vit_t-8x112.safetensors"


# a recipe small enough to train in a second: 8 clips of 4 × 32², one epoch of two steps
TINY = {"dataset": "synthetic", "split": "train", "options": {"num_clips": 8}, "max_clips": 0, "seed": 0,
        "epochs": 1, "batch_size": 4, "lr": 1e-3, "warmup_epochs": 0.0, "amp": False,
        "model": "vit_t", "num_frames": 4, "img_size": 32}


def test_run_path_loads_shipped_weights_for_their_recipe_and_trains_any_other(tmp_path):
    train_pretrained(TINY, tmp_path / "made.pt")
    torch.manual_seed(0)
    model = build_model("vit_t", 4, num_frames=4, img_size=32)
    model.load_state_dict(torch.load(tmp_path / "made.pt", weights_only=True)["model"])
    shipped = ShippedWeights.of(TINY, tmp_path / "shipped")
    recipe = write_shipped(model, TINY, shipped, made={})
    assert recipe["weights_sha256"] == weights_sha256(model.state_dict())

    cache = RunCache(cache_dir=tmp_path / "cache", shipped_dir=tmp_path / "shipped")
    assert cache.pretrained(TINY) == shipped.path  # the shipped file, nothing trained
    assert not (tmp_path / "cache" / "models").exists()

    other = {**TINY, "seed": 1}  # another recipe: trained and cached under its own key
    path = cache.pretrained(other)
    assert path == pretrained_path(other, tmp_path / "cache") and path.is_file()

    # a damaged shipped file is not trusted: the recipe is trained instead
    shipped.path.write_bytes(shipped.path.read_bytes()[:-8] + b"\0" * 8)
    assert shipped_checkpoint(TINY, tmp_path / "shipped") is None


def test_cache_key_covers_generator_version_and_dataset_defaults(monkeypatch):
    key = pretrained_path(TINY, WEIGHTS_DIR)
    assert pretrained_path({**TINY, "options": {"num_clips": 8, "static_share": 0.5}}, WEIGHTS_DIR) == key  # a default
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", synthetic.GENERATOR_VERSION + 1)
    assert pretrained_path(TINY, WEIGHTS_DIR) != key
    monkeypatch.undo()
    no_count = {**TINY, "options": {}}  # the split's default size decides the clips too
    key = pretrained_path(no_count, WEIGHTS_DIR)
    monkeypatch.setitem(synthetic.DEFAULT_SIZES, "train", 5)
    assert pretrained_path(no_count, WEIGHTS_DIR) != key


def test_synthetic_dataset_rejects_an_empty_split():
    with pytest.raises(ValueError, match="num_clips must be ≥ 1"):
        synthetic.SyntheticMotion("val", num_frames=4, img_size=32, num_clips=0, cache=False)


@pytest.mark.slow
def test_default_recipe_learns_on_the_cpu_float32_path(tmp_path, monkeypatch):
    """The shipped weights' recipe, float32 on this CPU: the loss leaves chance (the phase change, when the
    network finds direction-selective features) and top-1 ends far above chance. The whole recipe: the
    phase change comes late in it, so a shorter one would not show it."""
    monkeypatch.setenv("TOKENBENCH_CACHE", str(tmp_path))
    pre = default_pretrain()
    result = train_pretrained(pre, tmp_path / "w.pt")
    chance = math.log(4)
    assert result.amp is False
    # the first epoch's mean holds the steps at chance before the phase change; the last epoch is past it
    assert result.losses[0] > 1.5 * result.final_loss and result.final_loss < 0.5 * chance, result.losses
    from tokenbench.harness.evaluate import evaluate
    from tokenbench.harness.run.clips import first_items
    torch.manual_seed(0)
    model = build_model("vit_t", 4, num_frames=8, img_size=112)
    model.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True)["model"])
    val = first_items("synthetic", "val", 400, num_frames=8, img_size=112)
    assert evaluate(model.eval(), val, None, batch_size=16)["top1"] > 75.0  # chance: 25 %
