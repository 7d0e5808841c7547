"""Does a model's head fit the data it is scored on? Checked before any measurement (issue 16).

A label at or beyond the head's class count cannot be predicted at all, and a head of another class count
than the data's means the checkpoint was trained for another label set: either way top-1 would be a number
without meaning. :func:`check_head_classes` refuses both with a sentence naming what is wrong: the manifest
and its line for a label out of range, the two class counts for a mismatch.

A dataset's class count is *declared* (the synthetic benchmark's classes, a manifest given ``classes=`` or
``num_classes=``) or *inferred* from its largest label (a bare manifest: ``max label + 1``). An inferred count
may legitimately fall short of the head's (a validation subset that misses the last classes), so only a
declared count must equal the head's; labels are checked against the head either way.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


class ClassCountError(ValueError):
    """The model's head and the data's labels disagree (the message names the manifest line or both counts)."""


def check_head_classes(num_classes: int, data_classes: int, labels: Sequence[int], paths: Sequence[str],
                       info: dict[str, Any]) -> None:
    """Refuse data the head of ``num_classes`` classes cannot score. ``data_classes``: the dataset's
    ``num_classes`` (0: unlabelled, nothing to check); ``labels`` / ``paths``: the clips about to be scored;
    ``info``: the dataset's ``info()`` (``manifest``, ``root``, ``num_classes_from``, ``dataset``)."""
    if data_classes <= 0:
        return
    name = info.get("dataset", "?")
    for label, where in _labelled(labels, paths, info):
        if label >= num_classes:
            raise ClassCountError(f"{where}: label {label} is outside the model's {num_classes} classes "
                                  f"(0…{num_classes - 1}); the checkpoint was trained for another label set")
    if data_classes != num_classes and info.get("num_classes_from") != "labels":
        raise ClassCountError(f"the model's head has {num_classes} classes but dataset {name!r} has "
                              f"{data_classes}: the checkpoint was trained for another label set (give the "
                              "model's checkpoint for this data, or num_classes to match it)")


def _labelled(labels: Sequence[int], paths: Sequence[str], info: dict[str, Any]):
    """(label, where) of every video: from the manifest when there is one (every entry, with its
    line, even those a streamed clip set has not loaded yet), else from the clips given."""
    from .manifest import ManifestError, read_manifest

    manifest = info.get("manifest")
    if manifest and Path(manifest).is_file():
        try:
            entries = read_manifest(manifest, info.get("root"))
        except (ManifestError, OSError, UnicodeDecodeError):
            entries = None  # e.g. an official CSV converted in memory: fall back to the clips
        if entries is not None:
            for e in entries:
                yield e.label, f"{manifest}, line {e.line} ({e.name})"
            return
    for label, path in zip(labels, paths):
        yield int(label), f"video {path}"
