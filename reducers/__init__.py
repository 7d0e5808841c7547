"""tokenbench.reducers — the reducer interface, the registry, and the built-in reducers.

Built-in reducer modules are not imported here: they are found through the ``tokenbench.reducers``
entry-point group like any third-party plugin (see :mod:`tokenbench.reducers.registry`).
"""
from .base import VIDEOMAE, Geometry, PackedTokens, Reducer, ReducerParamError, Selection
from .registry import (
    ENTRY_POINT_GROUP,
    UnknownReducerError,
    available_reducers,
    broken_reducers,
    get_reducer,
    reducer_class,
    reducer_params,
    register_reducer,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "VIDEOMAE",
    "Geometry",
    "PackedTokens",
    "Reducer",
    "ReducerParamError",
    "Selection",
    "UnknownReducerError",
    "available_reducers",
    "broken_reducers",
    "get_reducer",
    "reducer_class",
    "reducer_params",
    "register_reducer",
]
