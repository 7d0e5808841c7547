"""The dataset registry: names → dataset formats, through the same mechanism as reducers
(:class:`~tokenbench.plugins.EntryPointRegistry`).

A dataset format is a :class:`~tokenbench.datasets.base.ClipDataset` subclass::

    class MyClips(ClipDataset):
        labelled = True                 # has labels: train cells and top-1 can use it
        needs = ("manifest",)           # options a suite must give (checked before any work)

        @classmethod
        def view_options(cls, clips, crops):   # how a suite's views = "CLIPSxCROPS" maps to options
            return {"num_clips": clips, "num_crops": crops}

        def __init__(self, split="val", *, num_frames=16, img_size=224, **options): ...

registered by a package's ``pyproject.toml``::

    [project.entry-points."tokenbench.datasets"]
    my_format = "my_pkg.mod:MyClips"

or at run time with ``@register_dataset("my_format")``. The built-ins are declared the first way in
tokenbench's own ``pyproject.toml``. The harness asks these declarations and never a dataset's name. An entry
point may also name a :class:`DatasetFormat`, whose ``factory`` builds the dataset when the class alone does
not (several names sharing one class with different defaults, as the manifest formats: datasets/formats.py).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tokenbench.plugins import EntryPointRegistry

from .base import ClipDataset

ENTRY_POINT_GROUP = "tokenbench.datasets"


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


def _adopt(name: str, obj: object) -> DatasetFormat:
    """What an entry point names: a ClipDataset subclass, or a DatasetFormat (a class with a factory)."""
    if isinstance(obj, DatasetFormat):
        return dataclasses.replace(obj, name=name)
    if isinstance(obj, type) and issubclass(obj, ClipDataset):
        return DatasetFormat(name, obj, obj)
    raise TypeError(f"{name!r} is neither a ClipDataset subclass nor a DatasetFormat (got {obj!r})")


FORMATS: EntryPointRegistry[DatasetFormat] = EntryPointRegistry(
    ENTRY_POINT_GROUP, "dataset", _adopt, UnknownDatasetError)


def register_dataset(name: str, factory: Callable[..., ClipDataset] | None = None):
    """Class decorator: make ``get_dataset(name, …)`` build this class (or call ``factory``)."""
    def deco(cls: type[ClipDataset]) -> type[ClipDataset]:
        if not (isinstance(cls, type) and issubclass(cls, ClipDataset)):
            raise TypeError(f"register_dataset({name!r}): {cls!r} is not a ClipDataset subclass")
        origin = f"{cls.__module__}:{cls.__qualname__}"
        FORMATS.register(name, DatasetFormat(name, cls, factory or cls), origin)
        return cls
    return deco


def available_datasets() -> list[str]:
    """Names of every format that loads (built-in, plugin, registered at run time), sorted."""
    return FORMATS.names()


def broken_datasets() -> dict[str, str]:
    """Plugins whose entry point failed to load: name -> error."""
    return FORMATS.broken()


def dataset_format(name: str) -> DatasetFormat:
    return FORMATS.get(name)


def get_dataset(name: str, split: str = "val", *, num_frames: int = 16, img_size: int = 224,
                **options: Any) -> ClipDataset:
    """Build dataset ``name`` for ``split`` with clips of ``num_frames`` frames of ``img_size``²."""
    return dataset_format(name).factory(split=split, num_frames=num_frames, img_size=img_size, **options)
