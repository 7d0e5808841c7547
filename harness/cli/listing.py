"""``tokenbench list``: every reducer, built-in and plugin, with its parameters and defaults."""
from __future__ import annotations

import dataclasses

from tokenbench.reducers import available_reducers, broken_reducers, reducer_class, reducer_params
from tokenbench.reducers.registry import reducer_origin


def add_cli(sub) -> None:
    p = sub.add_parser("list", help="list reducers (built-in and plugins) with their parameters",
                       description="List every reducer found through the 'tokenbench.reducers' entry-point "
                                   "group, with its parameters and defaults. Plugins that fail to import "
                                   "are listed as broken, with their error.")
    p.set_defaults(func=run)


def run(args) -> int:
    for name in available_reducers():
        cls = reducer_class(name)
        doc = (cls.__doc__ or "").strip().splitlines()
        summary = doc[0] if doc and not doc[0].startswith(cls.__name__ + "(") else ""
        print(f"{name:<10} {reducer_origin(name)}" + (f"  — {summary}" if summary else ""))
        for p in reducer_params(cls):
            default = "(required)" if p.default is dataclasses.MISSING else repr(p.default)
            print(f"    {p.name:<18} = {default:<12} {p.help}")
    broken = broken_reducers()
    for name, err in sorted(broken.items()):
        print(f"{name:<10} BROKEN: {err}")
    if broken:
        print(f"\n{len(broken)} plugin(s) failed to load and were skipped.")
    return 0
