"""The dataset registry: names → dataset classes, the way reducers are registered.

A dataset format is a :class:`~tokenbench.datasets.base.ClipDataset` subclass registered under a name::

    @register_dataset("my_format")
    class MyClips(ClipDataset):
        labelled = True                 # has labels: train cells and top-1 can use it
        needs = ("manifest",)           # options a suite must give (checked before any work)

        @classmethod
        def view_options(cls, clips, crops):   # how a suite's views = "CLIPSxCROPS" maps to options
            return {"num_clips": clips, "num_crops": crops}

        def __init__(self, split="val", *, num_frames=16, img_size=224, **options): ...

The harness asks these declarations and never a dataset's name. ``factory`` builds the dataset when the
class alone does not (several names sharing one class with different defaults, as the manifest formats).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .base import ClipDataset


class UnknownDatasetError(ValueError):
    """No dataset of that name; the message lists the valid names."""


@dataclass(frozen=True)
class DatasetFormat:
    name: str
    cls: type[ClipDataset]
    factory: Callable[..., ClipDataset]  # (split=, num_frames=, img_size=, **options) -> dataset

    @property
    def labelled(self) -> bool:
        return self.cls.labelled

    @property
    def needs(self) -> tuple[str, ...]:
        return tuple(self.cls.needs)

    def view_options(self, clips: int, crops: int) -> dict[str, Any]:
        return self.cls.view_options(clips, crops)


_FORMATS: dict[str, DatasetFormat] = {}


def register_dataset(name: str, factory: Callable[..., ClipDataset] | None = None):
    """Class decorator: make ``get_dataset(name, …)`` build this class (or call ``factory``)."""
    def deco(cls: type[ClipDataset]) -> type[ClipDataset]:
        if not (isinstance(cls, type) and issubclass(cls, ClipDataset)):
            raise TypeError(f"register_dataset({name!r}): {cls!r} is not a ClipDataset subclass")
        _FORMATS[name] = DatasetFormat(name, cls, factory or cls)
        return cls
    return deco


def available_datasets() -> list[str]:
    """Registered names, in registration order."""
    return list(_FORMATS)


def dataset_format(name: str) -> DatasetFormat:
    try:
        return _FORMATS[name]
    except KeyError:
        raise UnknownDatasetError(f"unknown dataset {name!r}; available: {', '.join(_FORMATS)}") from None


def get_dataset(name: str, split: str = "val", *, num_frames: int = 16, img_size: int = 224,
                **options: Any) -> ClipDataset:
    """Build dataset ``name`` for ``split`` with clips of ``num_frames`` frames of ``img_size``²."""
    return dataset_format(name).factory(split=split, num_frames=num_frames, img_size=img_size, **options)
