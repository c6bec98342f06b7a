"""The error of the config schema, shared by every component that reads a config."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A config (file, table or dense array) that cannot be used; the message names the field."""
