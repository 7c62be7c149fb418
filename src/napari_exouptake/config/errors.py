"""The one error of an assay config: a user mistake, named in one line."""

from __future__ import annotations


class ConfigError(ValueError):
    """A user mistake in an assay config: the message names the key and what is allowed."""
