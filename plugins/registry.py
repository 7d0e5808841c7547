"""Names → objects, from an entry-point group and from run-time registration, for every open axis.

A package declares, in its ``pyproject.toml``::

    [project.entry-points."tokenbench.reducers"]     # or "tokenbench.datasets"
    my_name = "my_pkg.mod:MyThing"

tokenbench's own built-ins are declared the same way, so the plugin path is the path every entry takes.
Entry points load lazily; one that fails to import (even by ``sys.exit``) is recorded as broken
(:meth:`EntryPointRegistry.broken`) and never stops the others. A name is resolved built-ins first, so a
plugin cannot shadow a built-in: it is reported as claiming a taken name instead.
"""
from __future__ import annotations

import importlib.metadata
import traceback
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
OWN_DISTRIBUTION = "tokenbench"


def _builtin(ep: importlib.metadata.EntryPoint) -> bool:
    """Declared by tokenbench itself (its own distribution, or its own package when the metadata has none)."""
    dist = getattr(ep, "dist", None)
    if dist is not None and getattr(dist, "name", None):
        return dist.name.lower() == OWN_DISTRIBUTION
    return ep.value.split(":", 1)[0].split(".", 1)[0] == OWN_DISTRIBUTION


def _describe_failure(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"called sys.exit({exc.code!r}) while being imported"
    return "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()[-1]


class EntryPointRegistry(Generic[T]):
    """The entries of one axis: ``group`` is the entry-point group, ``kind`` names an entry in messages
    ("reducer"), ``adopt(name, loaded) -> T`` checks what an entry point loaded and makes the entry of it
    (raising ``TypeError`` when it is not one), ``unknown`` is the error raised for a name not there."""

    def __init__(self, group: str, kind: str, adopt: Callable[[str, object], T],
                 unknown: type[Exception] = KeyError):
        self.group, self.kind, self.adopt, self.unknown = group, kind, adopt, unknown
        self._entries: dict[str, T] = {}
        self._origin: dict[str, str] = {}  # name -> "module:object" it came from
        self._broken: dict[str, str] = {}
        self._all_loaded = False

    # --- registration ------------------------------------------------------------------------------
    def register(self, name: str, entry: T, origin: str) -> None:
        """Register ``entry`` under ``name`` at run time (``origin``: "module:object")."""
        self._entries[name] = entry
        self._origin.setdefault(name, origin)
        self._broken.pop(name, None)

    def entry_points(self) -> list[importlib.metadata.EntryPoint]:
        """The group's entry points, tokenbench's own first: a built-in name resolves to the built-in."""
        eps = list(importlib.metadata.entry_points(group=self.group))
        return sorted(eps, key=lambda ep: not _builtin(ep))  # stable: otherwise in discovery order

    def _load(self, ep: importlib.metadata.EntryPoint) -> None:
        if ep.name in self._entries:
            origin = self._origin.get(ep.name, "")
            if origin != ep.value:  # a second entry under a name already taken: say so
                owner = "the built-in" if origin.split(".")[0] == OWN_DISTRIBUTION else "the plugin"
                self._broken[f"{ep.name} ({ep.value})"] = (
                    f"claims the name {ep.name!r}, already taken by {owner} {origin}; "
                    "ignored (register it under another name)")
            return
        try:
            entry = self.adopt(ep.name, ep.load())
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - a failing import (even sys.exit) is reported
            self._broken[ep.name] = f"{ep.value}: {_describe_failure(exc)}"
            return
        self._entries[ep.name] = entry
        self._origin[ep.name] = ep.value

    def _load_all(self) -> None:
        if not self._all_loaded:
            for ep in self.entry_points():
                self._load(ep)
            self._all_loaded = True

    # --- lookup --------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Names of every entry that loads (built-in, plugin, registered at run time), sorted."""
        self._load_all()
        return sorted(self._entries)

    def broken(self) -> dict[str, str]:
        """Entry points that failed to load: name -> error."""
        self._load_all()
        return dict(self._broken)

    def get(self, name: str) -> T:
        if name not in self._entries:
            for ep in self.entry_points():  # built-ins first
                if ep.name == name:
                    self._load(ep)
                    if name in self._entries:
                        break
        if name in self._entries:
            return self._entries[name]
        if name in self._broken or (not self._all_loaded and name in self.broken()):
            raise self.unknown(f"{self.kind} {name!r} is installed but failed to load: {self._broken[name]}")
        raise self.unknown(f"unknown {self.kind} {name!r}; available: {', '.join(self.names()) or '(none)'}")

    def origin(self, name: str) -> str:
        self.get(name)
        return self._origin.get(name, "")

    def registered(self, name: str) -> T | None:
        """The entry under ``name`` if one is registered already (loads nothing)."""
        return self._entries.get(name)
