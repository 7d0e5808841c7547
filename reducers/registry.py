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
from dataclasses import dataclass
from typing import Any

from tokenbench.plugins import EntryPointRegistry

from .base import Reducer, ReducerParamError

ENTRY_POINT_GROUP = "tokenbench.reducers"


class UnknownReducerError(KeyError, ValueError):
    """No reducer of that name. The message lists the valid names."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


def _adopt(name: str, obj: object) -> type[Reducer]:
    if not (isinstance(obj, type) and issubclass(obj, Reducer)):
        raise TypeError(f"{name!r} is not a tokenbench Reducer subclass (got {obj!r})")
    if not obj.name:
        obj.name = name
    return obj


REDUCERS: EntryPointRegistry[type[Reducer]] = EntryPointRegistry(
    ENTRY_POINT_GROUP, "reducer", _adopt, UnknownReducerError)


def register_reducer(name: str):
    """Class decorator: register a :class:`Reducer` subclass under ``name`` (sets ``cls.name``)."""

    def wrap(cls: type[Reducer]) -> type[Reducer]:
        if not (isinstance(cls, type) and issubclass(cls, Reducer)):
            raise TypeError(f"@register_reducer({name!r}) needs a Reducer subclass, got {cls!r}")
        cls.name = name
        existing = REDUCERS.registered(name)
        if existing is not None and existing is not cls and _qualname(existing) != _qualname(cls):
            raise ValueError(f"reducer name {name!r} is already taken by {_qualname(existing)}")
        REDUCERS.register(name, cls, f"{cls.__module__}:{cls.__qualname__}")
        return cls

    return wrap


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def available_reducers() -> list[str]:
    """Names of every reducer that loads (built-in and plugin), sorted."""
    return REDUCERS.names()


def broken_reducers() -> dict[str, str]:
    """Plugins whose entry point failed to load: name -> error."""
    return REDUCERS.broken()


def reducer_class(name: str) -> type[Reducer]:
    return REDUCERS.get(name)


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
    return REDUCERS.origin(name)


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
