"""The default model's weights, shipped in the package, and what they were made from.

The default suite's model (vit_t, 8 × 112², pretrained on the synthetic benchmark's solid clips) is trained
once here and shipped as ``weights/vit_t-8x112.safetensors`` (float32, tokenbench's VideoMAE layout) beside
``weights/vit_t-8x112.recipe.json``: everything the weights depend on (:func:`weights_identity`: the
model, the whole training recipe with its defaults filled in, and the training data's identity — dataset,
split, every generation option with its default, the synthetic generator's version), the sha256 of the file
and of the weights (:func:`tokenbench.harness.checkpoint.weights_sha256`, what records carry), and how and
where they were made.

``tokenbench run`` loads the shipped file wherever a suite's model asks for a self-trained model whose
identity equals the recipe's (:func:`shipped_checkpoint`); any other recipe — another seed, more epochs,
another generator version — is trained and cached under a key that hashes that identity
(:func:`tokenbench.harness.run.models.ensure_pretrained`).

Why float32 and not fp16: vit_t's weights are ~22 MB in float32, within the package's 25 MB allowance, so
the loaded model is the trained one bit for bit and its top-1 needs no second check. Why float32 training:
the same recipe under bf16 autocast landed at 90.8–95.2 % top-1 on three CPUs (whether bf16 runs natively,
and how, decides the rounding); float32 is the one path every machine runs.

Make them again (after a change to the recipe, the generator or the model)::

    python -m tokenbench.harness.shipped_weights            # trains (cached), writes both files, scores val

It trains with the run path's own code (:func:`~tokenbench.harness.run.models.train_pretrained`) on the
default suite's ``pretrain`` table, so the recipe file and the suite cannot disagree.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import torch

from tokenbench.datasets import dataset_format

from .settings import PretrainSettings

WEIGHTS_DIR = Path(__file__).with_name("weights")
RECIPE_FORMAT = 1


def data_identity(pretrain: dict[str, Any]) -> dict[str, Any]:
    """The training clips' identity: the dataset format's own (every option it resolves, its generator's
    version where it has one), worked out without making a clip."""
    settings = PretrainSettings.from_table(pretrain)
    name, n = settings.dataset, settings.max_clips
    cls = dataset_format(name).cls
    opts = dict(settings.options)
    if n:
        opts = {**cls.first_options(n), **opts}  # as harness.run.clips.first_items builds the split
    ident = cls.identity(settings.split, num_frames=pretrain["num_frames"],
                         img_size=pretrain["img_size"], **opts)
    return {"dataset": name, "max_clips": n, **ident}


def weights_identity(pretrain: dict[str, Any]) -> dict[str, Any]:
    """Everything a self-trained model's weights depend on (a suite's ``pretrain_config``): the model,
    the whole recipe (defaults filled in) and :func:`data_identity`. Equal identities, equal weights (on a
    machine whose float32 kernels round alike)."""
    recipe = dataclasses.asdict(PretrainSettings.from_table(pretrain).recipe)
    return json.loads(json.dumps({
        "model": pretrain["model"], "num_frames": int(pretrain["num_frames"]), "img_size": int(pretrain["img_size"]),
        "recipe": recipe, "data": data_identity(pretrain)}, sort_keys=True))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class ShippedWeights:
    """One shipped weights file and its recipe (``<stem>.safetensors`` beside ``<stem>.recipe.json``)."""

    directory: Path
    stem: str  # <model>-<frames>x<size>

    @classmethod
    def of(cls, pretrain: dict[str, Any], directory: Path = WEIGHTS_DIR) -> ShippedWeights:
        return cls(Path(directory), f"{pretrain['model']}-{pretrain['num_frames']}x{pretrain['img_size']}")

    @property
    def path(self) -> Path:
        return self.directory / f"{self.stem}.safetensors"

    @property
    def recipe_path(self) -> Path:
        return self.directory / f"{self.stem}.recipe.json"

    def recipe(self) -> dict[str, Any]:
        return json.loads(self.recipe_path.read_text()) if self.recipe_path.is_file() else {}

    def fits(self, pretrain: dict[str, Any]) -> bool:
        """The file is here, whole (its sha256 as recorded), and was made by exactly this recipe."""
        rec = self.recipe()
        if not rec or not self.path.is_file() or rec.get("identity") != weights_identity(pretrain):
            return False
        return _file_sha256_cached(self.path, self.path.stat().st_mtime_ns) == rec.get("file_sha256")


@functools.lru_cache(maxsize=8)
def _file_sha256_cached(path: Path, mtime_ns: int) -> str:
    return file_sha256(path)


def shipped_checkpoint(pretrain: dict[str, Any], directory: Path = WEIGHTS_DIR) -> Path | None:
    """The shipped weights file of ``pretrain``'s model when it was made by this very recipe, else None
    (then it is trained)."""
    shipped = ShippedWeights.of(pretrain, directory)
    return shipped.path if shipped.fits(pretrain) else None


def write_shipped(model: torch.nn.Module, pretrain: dict[str, Any], shipped: ShippedWeights,
                  made: dict[str, Any]) -> dict[str, Any]:
    """Write ``model``'s weights (float32 safetensors) and the recipe file; returns the recipe."""
    from safetensors.torch import save_file

    from .checkpoint import weights_sha256

    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    shipped.directory.mkdir(parents=True, exist_ok=True)
    save_file(state, str(shipped.path), metadata={"format": "tokenbench", "layout": "videomae"})
    recipe = {"format": RECIPE_FORMAT, "command": "python -m tokenbench.harness.shipped_weights",
              "weights_file": shipped.path.name, "dtype": "float32",
              "file_sha256": file_sha256(shipped.path), "weights_sha256": weights_sha256(state),
              "identity": weights_identity(pretrain), "made": made}
    shipped.recipe_path.write_text(json.dumps(recipe, indent=2, sort_keys=True) + "\n")
    return recipe


def main(argv: list[str] | None = None) -> int:
    from .checkpoint import checkpoint_classes, load_checkpoint
    from .evaluate import evaluate
    from .fingerprint import cpu_isa, cpu_model
    from .model import build_model
    from .paths import cache_root
    from .run.clips import first_items
    from .run.models import cached_pretrained
    from .suite import load_suite

    ap = argparse.ArgumentParser(prog="python -m tokenbench.harness.shipped_weights",
                                 description="Train the default suite's model by its recipe and write the shipped "
                                             "weights and their recipe file.")
    ap.add_argument("--suite", default="default", help="the suite whose first model's pretrain table is the recipe")
    ap.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="where to write (default: the package's weights/)")
    ap.add_argument("--val-clips", type=int, default=1000, help="val clips to score the weights on (0: none)")
    args = ap.parse_args(argv)
    pretrain = load_suite(args.suite).models[0].pretrain_config()
    # trained by the run path's own code into its cache (a second call only exports and scores)
    checkpoint = cached_pretrained(pretrain, cache_root(), "cpu", log=print)
    torch.manual_seed(0)
    model = build_model(pretrain["model"], checkpoint_classes(checkpoint) or 0, num_frames=pretrain["num_frames"],
                        img_size=pretrain["img_size"])
    load_checkpoint(model, checkpoint)
    train_summary = torch.load(checkpoint, map_location="cpu", weights_only=True).get("train_result", "{}")
    made = {"torch": torch.__version__, "cpu": cpu_model(), "isa": cpu_isa(), "threads": torch.get_num_threads(),
            "train": json.loads(train_summary)}
    if args.val_clips:
        val = first_items(pretrain["dataset"], "val", args.val_clips, num_frames=pretrain["num_frames"],
                          img_size=pretrain["img_size"])
        ev = evaluate(model.eval(), val, None, batch_size=16, device="cpu")
        made["val"] = {"split": "val (the benchmark's: faint clips included)", "num_clips": ev["num_clips"],
                       "top1": ev["top1"], "top5": ev["top5"]}
        print(f"val top-1 {ev['top1']:.2f} % on {ev['num_clips']} clips")
    shipped = ShippedWeights.of(pretrain, args.out)
    recipe = write_shipped(model, pretrain, shipped, made)
    print(f"wrote {shipped.path} and {shipped.recipe_path.name} (weights sha256 {recipe['weights_sha256']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
