"""The built-in formats that share one class: ``manifest``, ``kinetics`` and ``ssv2`` are all a
:class:`~tokenbench.datasets.manifest.ManifestDataset`, with three sets of defaults and inputs. Declared as
entry points in tokenbench's ``pyproject.toml`` like every format."""
from __future__ import annotations

import functools
from typing import Any

from .manifest import ManifestDataset, kinetics_csv_to_manifest, ssv2_json_to_manifest
from .registry import DatasetFormat


def _manifest_dataset(name: str, *, split: str, num_frames: int, img_size: int,
                      **options: Any) -> ManifestDataset:
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


def _format(name: str) -> DatasetFormat:
    return DatasetFormat(name, ManifestDataset, functools.partial(_manifest_dataset, name))


MANIFEST, KINETICS, SSV2 = _format("manifest"), _format("kinetics"), _format("ssv2")
