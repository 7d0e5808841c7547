"""Errors every layer may raise: a leaf module, importing nothing of the project.

The CLI turns a :class:`UserError` into one line on stderr and exit status 2; the library raises it
without knowing who called it.
"""
from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user asked for: printed as one clear line, exit status 2."""


class SuiteError(UserError):
    """A suite file that cannot run; the message names the file and line (or the --set) at fault."""


class CellError(RuntimeError):
    """A cell that cannot be measured (the message says why); recorded as failed."""
