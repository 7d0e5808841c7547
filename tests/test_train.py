"""Training with a reducer active: the loss goes down, the reducer changes the tokens the model sees, the
evaluation protocol, checkpoints in the VideoMAE layout, and the ``tokenbench train`` command.

Everything runs on small 8 × 64² synthetic clips (4 × 4 × 4 = 64 tubelets) so a step takes a fraction of
a second on the 2-core CPU."""
from __future__ import annotations

import json
import math

import pytest
import torch

from tokenbench.datasets.synthetic import SyntheticMotion, load_backgrounds
from tokenbench.harness.checkpoint import load_checkpoint
from tokenbench.harness.model import build_model
from tokenbench.harness.train import TrainRecipe, TrainResult, evaluate, inference_reducer, lr_at, train
from tokenbench.reducers import available_reducers, get_reducer

FRAMES, SIZE, TOKENS = 8, 64, 64


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: these tests check behaviour, and on a loaded 2-core machine OpenMP's
    spin-waiting made two threads several times slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    load_backgrounds(146)
    # one object over mostly static backgrounds, so RLT has tubelets to drop at this small size
    opts = {"num_objects": 1, "static_share": 0.8, "camera_share": 0.1, "cache": False}
    tr = SyntheticMotion("train", FRAMES, SIZE, num_clips=32, **opts)
    va = SyntheticMotion("val", FRAMES, SIZE, num_clips=16, **opts)
    return tr, va


def model(**kw):
    torch.manual_seed(0)
    return build_model("vit_t", 4, num_frames=FRAMES, img_size=SIZE, **kw)


def need(name):
    if name not in available_reducers():
        pytest.skip(f"reducer {name!r} not installed")


def test_loss_decreases():
    """A few steps on 16 tiny clips (8 × 32², 16 tubelets): the model fits them."""
    ds = SyntheticMotion("train", FRAMES, 32, num_clips=16, num_objects=1, cache=False)
    torch.manual_seed(0)
    m = build_model("vit_t", 4, num_frames=FRAMES, img_size=32)
    res = train(m, ds, None, recipe=TrainRecipe(epochs=8, batch_size=8, lr=5e-4, weight_decay=0.0, warmup_epochs=1,
                                                label_smoothing=0.0, seed=0, amp=False), log=False)
    assert isinstance(res, TrainResult)
    assert res.steps == 16 and res.epochs == 8 and len(res.losses) == 8
    assert all(math.isfinite(v) for v in res.losses)
    assert res.losses[-1] < 0.7 * res.losses[0], res.losses
    assert res.wall_s > 0 and res.cpu_s > 0 and res.clips == 128 and res.clips_per_s > 0
    assert res.tokens_mean == 16 and res.tokens_total == 16 and res.amp is False
    assert res.top1 is None


def test_checkpoint_round_trips(data, tmp_path):
    tr, va = data
    m = model()
    ckpt = tmp_path / "run" / "ckpt.pt"
    res = train(m, tr, va, recipe=TrainRecipe(epochs=1, batch_size=8, lr=1e-3, weight_decay=0.05, warmup_epochs=0.5,
                                              label_smoothing=0.1, seed=0, max_steps=2, amp=False),
                out=ckpt, log=False)
    assert res.checkpoint == str(ckpt) and ckpt.is_file()
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert set(raw) >= {"model", "epoch", "train_result", "config"}  # VideoMAE layout: {"model": state_dict}
    assert json.loads(raw["train_result"])["steps"] == 2
    fresh = build_model("vit_t", 4, num_frames=FRAMES, img_size=SIZE)
    info = load_checkpoint(fresh, ckpt)
    assert info.missing == [] and info.unexpected == []
    for k, v in m.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k
    # the reloaded model evaluates to the same figures
    a, b = evaluate(m, va), evaluate(fresh, va)
    assert a["top1"] == b["top1"] == res.top1 and abs(a["loss"] - b["loss"]) < 1e-5


def test_evaluate_counts(data):
    _, va = data
    ev = evaluate(model(), va, batch_size=5)
    assert ev["num_clips"] == ev["num_videos"] == 16 and ev["tokens_mean"] == TOKENS
    assert 0 <= ev["top1"] <= ev["top5"] <= 100


def test_reducers_change_training_tokens(data):
    tr, va = data
    kw = dict(recipe=TrainRecipe(epochs=1, batch_size=8, lr=1e-3, weight_decay=0.05, warmup_epochs=0,
                                 label_smoothing=0.1, seed=0, max_steps=2, amp=False), log=False)
    rnd = train(model(), tr, va, get_reducer("random", keep=0.25), **kw)
    assert rnd.tokens_mean == 16
    assert rnd.eval_reducer is None and rnd.eval_tokens_mean == TOKENS  # random masking: train-time only
    need("rlt")
    rlt = train(model(), tr, va, get_reducer("rlt", threshold=0.1), **kw)
    assert 16 <= rlt.tokens_mean < 0.9 * TOKENS  # static cells collapse to one run each
    assert rlt.eval_reducer.startswith("RLT(") and rlt.eval_tokens_mean < TOKENS
    # the override: evaluate an RLT-trained model without any reducer
    plain = train(model(), tr, va, get_reducer("rlt", threshold=0.1), eval_reducer=get_reducer("none"), **kw)
    assert plain.eval_reducer is None and plain.eval_tokens_mean == TOKENS


def test_rlt_with_length_embedding_and_random_masking(data):
    need("rlt_random")
    tr, va = data
    red = get_reducer("rlt_random", threshold=0.1, keep=0.5, length_embedding=True)
    m = model(length_embedding=True)
    before = m.length_embed.detach().clone()
    res = train(m, tr, va, red, TrainRecipe(epochs=1, batch_size=8, lr=1e-3, weight_decay=0.05, warmup_epochs=0,
                                            label_smoothing=0.1, seed=0, max_steps=2, amp=False), log=False)
    assert not torch.equal(before, m.length_embed.detach())  # the length embedding is trained
    assert res.eval_reducer.startswith("RLT(")  # rlt_random is evaluated as plain RLT
    assert res.tokens_mean < res.eval_tokens_mean  # masking on top of RLT during training only


def test_inference_reducer_rule():
    none = get_reducer("none")
    assert inference_reducer(none) is none
    assert inference_reducer(get_reducer("random", keep=0.5)).identity  # train-only: evaluated as none
    if "rlt" in available_reducers():
        r = get_reducer("rlt", threshold=0.2)
        assert inference_reducer(r) is r


def test_schedule_warmup_then_cosine():
    lr, total, warm = 1e-3, 100, 10
    assert lr_at(0, total, warm, lr, 0.0) == pytest.approx(lr / warm)
    assert lr_at(9, total, warm, lr, 0.0) == pytest.approx(lr)
    assert lr_at(10, total, warm, lr, 0.0) == pytest.approx(lr)
    assert lr_at(55, total, warm, lr, 0.0) == pytest.approx(lr / 2)
    assert lr_at(100, total, warm, lr, 1e-5) == pytest.approx(1e-5)
    steps = [lr_at(s, total, warm, lr, 0.0) for s in range(warm, total)]
    assert all(a >= b for a, b in zip(steps, steps[1:]))


def test_amp_resolution():
    from tokenbench.harness.train import native_bf16, resolve_amp

    cpu = torch.device("cpu")
    assert resolve_amp(True, cpu) is True and resolve_amp(False, cpu) is False
    assert resolve_amp("auto", cpu) is native_bf16(cpu)
    with pytest.raises(ValueError, match="amp"):
        resolve_amp("yes", cpu)


def test_bad_arguments_fail_before_training(data):
    tr, _ = data
    with pytest.raises(ValueError, match="epochs"):
        train(model(), tr, None, recipe=TrainRecipe(epochs=0), log=False)
    with pytest.raises(ValueError, match="no full batch"):
        train(model(), tr.head(3), None, recipe=TrainRecipe(epochs=1, batch_size=8),
              log=False)


def test_cli_trains_and_writes_checkpoint_and_json(tmp_path, capsys):
    from tokenbench.harness.cli import main

    need("rlt")
    ckpt, js = tmp_path / "c.pt", tmp_path / "r.json"
    rc = main(["train", "--model", "vit_t", "--dataset", "synthetic", "--num-frames", "8", "--img-size", "64",
               "--data", "num_clips=16", "cache=False", "num_objects=1", "--reducer", "rlt", "threshold=0.1",
               "length_embedding=True", "--epochs", "1", "--batch-size", "8", "--amp", "off", "--out", str(ckpt),
               "--json", str(js)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "top-1" in out and "s to train" in out
    res = json.loads(js.read_text())
    assert res["steps"] == 2 and res["config"]["length_embedding"] is True and res["checkpoint"] == str(ckpt)
    m = build_model("vit_t", 4, num_frames=8, img_size=64, length_embedding=True)
    assert load_checkpoint(m, ckpt).missing == []


def test_cli_rejects_bad_reducer_parameter(capsys):
    from tokenbench.harness.cli import main

    rc = main(["train", "--reducer", "random", "keep=2.0", "--epochs", "1"])
    assert rc == 2
    assert "keep" in capsys.readouterr().err
