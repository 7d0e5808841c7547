"""tokenbench.plugins — the one registry mechanism every open axis uses (reducers, dataset formats).

See :class:`~tokenbench.plugins.registry.EntryPointRegistry`.
"""
from .registry import EntryPointRegistry

__all__ = ["EntryPointRegistry"]
