"""Errors raised by embedding tables.

Every error subclasses :class:`TableError` and a builtin, so callers can catch either the
family or the builtin kind. An operation that raises has changed nothing.
"""

from __future__ import annotations


class TableError(Exception):
    """Base of every error an embedding table raises."""


class KeysError(TableError, ValueError):
    """Keys are not a one-dimensional ``uint64`` array."""


class ShapeError(TableError, ValueError):
    """An array has the wrong shape or dtype (e.g. gradients whose width is not ``dim``)."""


class NonFiniteGradientError(TableError, ValueError):
    """Gradients contain NaN or Inf."""


class NotTrainableError(TableError, RuntimeError):
    """A training operation was called on a serving (inference-only) table."""


class DeltaError(TableError, ValueError):
    """A delta or table metadata is malformed or does not fit this table."""
