"""A cell's model and reducer: self-trained weights (trained once, cached on disk under a file lock),
checkpoints, and what the cells of one process share (:class:`RunCache`)."""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import math
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tokenbench.datasets import get_dataset
from tokenbench.reducers import Reducer, get_reducer
from tokenbench.reducers.contract import Checked, checked

from ..checkpoint import checkpoint_classes, load_checkpoint, weights_sha256
from ..errors import CellError
from ..evaluate import model_input
from ..model import build_model
from ..paths import cache_root
from ..schema import Cell
from ..settings import PretrainSettings
from ..shipped_weights import WEIGHTS_DIR, shipped_checkpoint, weights_identity
from ..train import TrainResult, train
from .clips import ClipSet, data_key, first_items
from .common import DTYPES, describe_error, stable_hash
from .phases import PhaseClock


@dataclass
class RunCache:
    """What the cells of one process share: decoded clips, models, baseline predictions, calibrations."""

    clips: dict[str, ClipSet] = field(default_factory=dict)
    models: dict[str, torch.nn.Module] = field(default_factory=dict)
    baseline: dict[str, dict[str, Any]] = field(default_factory=dict)
    calibrated: dict[str, Any] = field(default_factory=dict)
    cache_dir: Path = field(default_factory=cache_root)
    pretrain_failures: dict[str, str] = field(default_factory=dict)  # a model whose training failed: why
    checkpoints: dict[str, dict[str, str]] = field(default_factory=dict)  # model key -> sha256 (+path)
    shipped_dir: Path = WEIGHTS_DIR  # where shipped weights are looked for (the package's own)
    phases: PhaseClock = field(default_factory=PhaseClock)  # where the cells' seconds went

    def pretrained(self, pretrain: dict[str, Any], device: str = "cpu",
                   log: Callable[[str], None] | None = None) -> Path:
        """:func:`ensure_pretrained`, remembering a failure so the model's other cells do not retrain it."""
        key = stable_hash(pretrain)
        if key in self.pretrain_failures:
            raise CellError(f"training the suite's {pretrain['model']} failed earlier in this run: "
                            f"{self.pretrain_failures[key]}")
        try:
            with self.phases("pretrain"):
                return ensure_pretrained(pretrain, self.cache_dir, device, log, self.shipped_dir)
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            self.pretrain_failures[key] = describe_error(exc)
            raise

    def drop_clips_except(self, keep: str | None) -> None:
        for k in [k for k in self.clips if k != keep]:
            del self.clips[k]


# A self-trained model whose last epoch's mean loss stays above this share of chance (ln C) has not learned,
# and the run says so: harness.train's recipe on the synthetic benchmark either finds its motion features
# (vit_t: ~0.4) or stays at ~ln 4 = 1.39 for the whole run (the phase change comes at a step that depends on
# the draw).
CHANCE_LOSS_SHARE = 0.9


def pretrained_path(pretrain: dict[str, Any], cache_dir: Path) -> Path:
    """Where a self-trained model's checkpoint is cached: named by everything its weights depend on
    (:func:`~tokenbench.harness.shipped_weights.weights_identity`: the recipe with its defaults, the training
    data's options with theirs, the synthetic generator's version)."""
    return cache_dir / "models" / f"{pretrain['model']}-{pretrain['num_frames']}x{pretrain['img_size']}-" \
                                  f"{stable_hash(weights_identity(pretrain))}.pt"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def ensure_pretrained(pretrain: dict[str, Any], cache_dir: Path, device: str = "cpu",
                      log: Callable[[str], None] | None = None, shipped_dir: Path = WEIGHTS_DIR) -> Path:
    """The checkpoint of a self-trained model: the package's shipped weights when they were made by this
    very recipe, else trained once per recipe and cached on disk."""
    return shipped_checkpoint(pretrain, shipped_dir) or cached_pretrained(pretrain, cache_dir, device, log)


def cached_pretrained(pretrain: dict[str, Any], cache_dir: Path, device: str = "cpu",
                      log: Callable[[str], None] | None = None) -> Path:
    """Trained once per training configuration and cached on disk (a file lock keeps parallel jobs from
    training it twice)."""
    path = pretrained_path(pretrain, cache_dir)
    if path.is_file():
        return path
    with file_lock(path.with_suffix(".lock")):
        if path.is_file():
            return path
        if log:
            log(f"training {pretrain['model']} ({pretrain['num_frames']}×{pretrain['img_size']}²) on "
                f"{pretrain['dataset']} for {PretrainSettings.from_table(pretrain).recipe.epochs} epochs "
                f"(once; cached as {path})")
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        train_pretrained(pretrain, tmp, device, log, cached_as=path)
        os.replace(tmp, path)
    return path


def train_pretrained(pretrain: dict[str, Any], out: Path, device: str = "cpu",
                     log: Callable[[str], None] | None = None, cached_as: Path | None = None) -> TrainResult:
    """Train a model from scratch by ``pretrain`` (a suite's ``pretrain_config``) and write it to ``out``;
    warns when it ended near chance, naming the file to delete (``cached_as``: where ``out`` will end up)."""
    settings = PretrainSettings.from_table(pretrain)
    ds = first_items(settings.dataset, settings.split, settings.max_clips, num_frames=pretrain["num_frames"],
                     img_size=pretrain["img_size"], options=settings.options)
    if not ds.num_classes:
        raise CellError(f"cannot pretrain on the unlabelled dataset {pretrain['dataset']!r}")
    torch.manual_seed(settings.recipe.seed)
    model = build_model(pretrain["model"], ds.num_classes, num_frames=pretrain["num_frames"],
                        img_size=pretrain["img_size"])
    result = train(model, ds, None, get_reducer("none"), settings.recipe,
                   device=device, out=out, log=log is not None)
    chance = math.log(ds.num_classes)
    if result.final_loss > CHANCE_LOSS_SHARE * chance:  # said, not refused: a tiny test recipe never learns
        msg = (f"pretraining {pretrain['model']} on {pretrain['dataset']} ended near chance (last epoch's loss "
               f"{result.final_loss:.3f}, chance ln {ds.num_classes} = {chance:.3f}): the model has not learned "
               f"and its top-1 will say so. Give a checkpoint (TOKENBENCH_DEFAULT_CHECKPOINT=PATH for the default "
               f"suite) or another seed in the model's pretrain table (seed = 1), and delete "
               f"{cached_as or out}")
        warnings.warn(msg, stacklevel=2)
        if log:
            log("WARNING: " + msg)
    return result


def model_key(cell: Cell, num_classes: int, length_embedding: bool) -> str:
    return stable_hash({k: getattr(cell, k) for k in ("model", "num_frames", "img_size", "checkpoint", "pretrain",
                                                      "device", "dtype", "attn_backend", "compile")}
                 | {"num_classes": num_classes, "length_embedding": length_embedding})


def load_model(cell: Cell, cache: RunCache, num_classes: int, length_embedding: bool = False,
               log: Callable[[str], None] | None = None) -> torch.nn.Module:
    """The cell's model in eval mode on its device and dtype (cached per process)."""
    key = model_key(cell, num_classes, length_embedding)
    if key in cache.models:
        return cache.models[key]
    with cache.phases("model"):
        model = _built_model(cell, cache, key, num_classes, length_embedding, log)
    cache.models[key] = model
    return model


def _built_model(cell: Cell, cache: RunCache, key: str, num_classes: int, length_embedding: bool,
                 log: Callable[[str], None] | None) -> torch.nn.Module:
    torch.manual_seed(int(cell.seed))
    model = build_model(cell.model, num_classes, num_frames=cell.num_frames, img_size=cell.img_size,
                        length_embedding=length_embedding, attn_backend=cell.attn_backend)
    ckpt = cell.checkpoint
    if ckpt.startswith("trained:"):
        if not cell.pretrain:
            raise CellError(f"checkpoint {ckpt} names a self-trained model but the cell has no pretrain settings")
        path = cache.pretrained(cell.pretrain, cell.device, log)
        info = load_checkpoint(model, path, strict=False)
        cache.checkpoints[key] = {"checkpoint_sha256": info.sha256, "checkpoint_path": str(path)}
    elif ckpt == "none":
        info = None
        cache.checkpoints[key] = {"checkpoint_sha256": weights_sha256(model.state_dict())}
    else:
        info = load_checkpoint(model, ckpt, strict=False)
        cache.checkpoints[key] = {"checkpoint_sha256": info.sha256}
    missing = [k for k in info.missing if k != "length_embed"] if info else []
    if missing:
        raise CellError(f"checkpoint {ckpt} lacks weights of {cell.model}: {', '.join(missing[:6])}")
    if length_embedding and info and "length_embed" in info.missing:
        raise CellError(f"the reducer uses a learned length embedding but checkpoint {ckpt} has none "
                        "(train with it: a train-mode cell, or a checkpoint fine-tuned with RLT's length embedding)")
    model = model.to(device=cell.device, dtype=DTYPES[cell.dtype]).eval()
    if cell.compile:
        model = torch.compile(model)
    return model


def model_classes(cell: Cell, clipset_classes: int) -> int:
    if cell.num_classes:
        return int(cell.num_classes)
    ckpt = cell.checkpoint
    if ckpt.startswith("trained:") and cell.pretrain:
        pre = cell.pretrain
        shipped = shipped_checkpoint(pre)
        if shipped is not None:  # its head tells; building the training split would render 3,000 clips
            return int(checkpoint_classes(shipped) or 0) or clipset_classes
        settings = PretrainSettings.from_table(pre)
        ds = get_dataset(settings.dataset, settings.split, num_frames=pre["num_frames"],
                         img_size=pre["img_size"], **settings.options)
        return int(ds.num_classes)
    if ckpt not in ("none", "") and not ckpt.startswith("trained:"):
        n = checkpoint_classes(ckpt)
        if n:
            return n
    return clipset_classes or 1000


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "_orig_mod", model)


def build_reducer(cell: Cell) -> Reducer | Checked:
    """The cell's reducer (``none`` included), wrapped in the contract check: a broken reducer names the rule
    it broke."""
    return checked(get_reducer(cell.reducer, **(cell.params or {})))


def calibrate(reducer, cell: Cell, clips: ClipSet, cache: RunCache):
    """Reducers with ``calibrate(batches)`` (random masking matched to RLT's budget) calibrate on the cell's
    clips before any measured work; the calibrated reducer is shared by cells on the same data."""
    if not reducer.calibrates:
        return reducer
    key = stable_hash({"reducer": cell.reducer, "params": cell.params, "data": data_key(cell)})
    if key in cache.calibrated:
        return cache.calibrated[key].fresh()
    bs = max(1, int(cell.batch_size))
    with cache.phases("calibration"):
        reducer.calibrate(model_input(b, "cpu", torch.float32) for b, _, _, _ in clips.batches(bs))
    cache.calibrated[key] = reducer
    return reducer.fresh()


def calibrate_with_model(reducer, cell: Cell, model: torch.nn.Module, model_id: str, cache: RunCache,
                         progress: Callable[[str], None] | None = None) -> tuple[Any, dict[str, Any] | None]:
    """Reducers that calibrate with the model in the loop (``calibrates_with_model``: threshold merging)
    run ``model`` on the first ``reducer.calibration_clips`` clips of the dataset's *train* split, never
    the clips the cell scores, before any measured work. Returns the calibrated reducer and the record of
    what it used and found (``None`` for other reducers); both are cached per reducer, model and data."""
    if not reducer.calibrates_with_model:
        return reducer, None
    if cell.split == "train":
        raise CellError(f"{cell.reducer} calibrates on the train split, and this cell scores the train split: "
                        "score a held-out split (val/test)")
    n = int(reducer.calibration_clips)
    source = {"dataset": cell.dataset, "split": "train", "clips": n, "chosen": f"the split's first {n} clips",
              "seed": (cell.dataset_options or {}).get("seed", 0),  # the synthetic generator's; 0 its default
              "dataset_options": dict(cell.dataset_options or {}), "num_frames": cell.num_frames,
              "img_size": cell.img_size}
    key = stable_hash({"reducer": cell.reducer, "params": cell.params, "model": model_id, "data": source})
    if key in cache.calibrated:
        params, record = cache.calibrated[key]
        return type(reducer)(**params), record
    if progress:
        progress(f"calibrating {cell.reducer} with the model on {n} train clips")
    ds = first_items(cell.dataset, "train", n, num_frames=cell.num_frames, img_size=cell.img_size,
                     options=cell.dataset_options)
    source["clips"] = len(ds)  # fewer where the split (or the suite's dataset options) has fewer
    bs = int(reducer.calibration_batch)
    dev, dtype = cell.device, DTYPES[cell.dtype]

    def batches():
        for i in range(0, len(ds), bs):
            items = [ds[j] for j in range(i, min(i + bs, len(ds)))]
            yield model_input(torch.stack([torch.as_tensor(c) for c, _, _ in items]), dev, dtype)

    found = reducer.calibrate_model(model, batches())
    record = {**dataclasses.asdict(found), "source": source}
    cache.calibrated[key] = (reducer.params(), record)
    return reducer.fresh(), record
