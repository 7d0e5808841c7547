"""Reducer registry: built-ins and third-party plugins, all found through one entry-point group.

Third-party packages declare, in their ``pyproject.toml``::

    [project.entry-points."tokenbench.reducers"]
    my_reducer = "my_pkg.mod:MyReducer"

The built-ins are declared the same way in tokenbench's own ``pyproject.toml``, so the plugin path is
the path every reducer takes. Entry points are loaded lazily; one that fails to import is recorded as
broken (see :func:`broken_reducers`) and never stops the others from loading.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import traceback
from dataclasses import dataclass
from typing import Any

from .base import Reducer, ReducerParamError

ENTRY_POINT_GROUP = "tokenbench.reducers"

_registry: dict[str, type[Reducer]] = {}
_origin: dict[str, str] = {}  # name -> "entry point value" or "registered at run time"
_broken: dict[str, str] = {}
_entry_points_loaded = False


class UnknownReducerError(KeyError, ValueError):
    """No reducer of that name. The message lists the valid names."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


def register_reducer(name: str):
    """Class decorator: register a :class:`Reducer` subclass under ``name`` (sets ``cls.name``)."""

    def wrap(cls: type[Reducer]) -> type[Reducer]:
        if not (isinstance(cls, type) and issubclass(cls, Reducer)):
            raise TypeError(f"@register_reducer({name!r}) needs a Reducer subclass, got {cls!r}")
        cls.name = name
        existing = _registry.get(name)
        if existing is not None and existing is not cls and _qualname(existing) != _qualname(cls):
            raise ValueError(f"reducer name {name!r} is already taken by {_qualname(existing)}")
        _registry[name] = cls
        _origin.setdefault(name, f"{cls.__module__}:{cls.__qualname__}")
        _broken.pop(name, None)
        return cls

    return wrap


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _builtin(ep: importlib.metadata.EntryPoint) -> bool:
    """Declared by tokenbench itself (its own distribution, or its own package when the metadata has none)."""
    dist = getattr(ep, "dist", None)
    if dist is not None and getattr(dist, "name", None):
        return dist.name.lower() == "tokenbench"
    return ep.value.split(":", 1)[0].split(".", 1)[0] == "tokenbench"


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    """The group's entry points, tokenbench's own first: a built-in name always resolves to the built-in."""
    eps = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    return sorted(eps, key=lambda ep: not _builtin(ep))  # stable: otherwise in discovery order


def _describe_failure(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"called sys.exit({exc.code!r}) while being imported"
    return "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()[-1]


def _load_entry_point(ep: importlib.metadata.EntryPoint) -> None:
    if ep.name in _registry:
        if _origin.get(ep.name) != ep.value:  # a second reducer under a name already taken: say so
            owner = "the built-in" if _registry[ep.name].__module__.split(".")[0] == "tokenbench" else "the plugin"
            _broken[f"{ep.name} ({ep.value})"] = (
                f"claims the name {ep.name!r}, already taken by {owner} {_origin.get(ep.name)}; "
                "ignored (register it under another name)")
        return
    try:
        obj = ep.load()
        if not (isinstance(obj, type) and issubclass(obj, Reducer)):
            raise TypeError(f"{ep.value} is not a tokenbench Reducer subclass (got {obj!r})")
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - a plugin that fails to import (even by sys.exit) is reported
        _broken[ep.name] = f"{ep.value}: {_describe_failure(exc)}"
        return
    if not obj.name:
        obj.name = ep.name
    _registry[ep.name] = obj
    _origin[ep.name] = ep.value


def _load_all() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    for ep in _entry_points():
        _load_entry_point(ep)
    _entry_points_loaded = True


def available_reducers() -> list[str]:
    """Names of every reducer that loads (built-in and plugin), sorted."""
    _load_all()
    return sorted(_registry)


def broken_reducers() -> dict[str, str]:
    """Plugins whose entry point failed to load: name -> error."""
    _load_all()
    return dict(_broken)


def reducer_class(name: str) -> type[Reducer]:
    if name not in _registry:
        for ep in _entry_points():  # built-ins first
            if ep.name == name:
                _load_entry_point(ep)
                if name in _registry:
                    break
    if name in _registry:
        return _registry[name]
    if name in _broken or (not _entry_points_loaded and name in broken_reducers()):
        raise UnknownReducerError(f"reducer {name!r} is installed but failed to load: {_broken[name]}")
    raise UnknownReducerError(
        f"unknown reducer {name!r}; available: {', '.join(available_reducers()) or '(none)'}"
    )


@dataclass(frozen=True)
class ParamInfo:
    name: str
    type: str
    default: Any
    help: str


def reducer_params(name_or_cls: str | type[Reducer]) -> list[ParamInfo]:
    """The parameters a reducer takes, with their defaults and help (field metadata ``help``)."""
    cls = reducer_class(name_or_cls) if isinstance(name_or_cls, str) else name_or_cls
    if not dataclasses.is_dataclass(cls):
        return []
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = dataclasses.MISSING
        tname = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        out.append(ParamInfo(f.name, tname, default, f.metadata.get("help", "")))
    return out


def reducer_origin(name: str) -> str:
    reducer_class(name)
    return _origin.get(name, "")


def get_reducer(name: str, **params: Any) -> Reducer:
    """Build reducer ``name`` with ``params``; fails before any work on a bad name or parameter."""
    cls = reducer_class(name)
    valid = {p.name: p for p in reducer_params(cls)}
    unknown = sorted(set(params) - set(valid))
    if unknown:
        choices = ", ".join(f"{p.name}={p.default!r}" for p in valid.values()) or "(none)"
        raise ReducerParamError(
            f"reducer {name!r} has no parameter {', '.join(map(repr, unknown))}; valid parameters: {choices}"
        )
    try:
        return cls(**params)
    except ReducerParamError:
        raise
    except TypeError as exc:
        raise ReducerParamError(f"reducer {name!r}: {exc}") from exc
