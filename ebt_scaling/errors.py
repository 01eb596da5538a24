"""The project's exception hierarchy (stdlib only).

Every error a user can cause carries a one-line message that names the problem and the fix; the CLI
prints ``str(exc)`` on stderr and exits non-zero without a traceback.
"""

from __future__ import annotations


class EbtScaleError(Exception):
    """Base class of every error this package raises on purpose."""

    exit_code = 1


class ConfigError(EbtScaleError, ValueError):
    """A configuration value is invalid. The message names the field and the fix."""

    exit_code = 2


class SpecError(ConfigError):
    """A sweep specification file is invalid (file, key and fix are named)."""


class DataError(EbtScaleError):
    """A corpus or tokenizer cannot be prepared or read."""


class StoreError(EbtScaleError):
    """The results database cannot be used as asked."""


class SchemaOutOfDate(StoreError):
    """The database schema is older than this package; the message names the upgrade command."""


class NotFound(StoreError):
    """A sweep, run or fit that was asked for does not exist."""


class DuplicateError(StoreError):
    """An insert collided with an existing unique row (name, config hash, metric step)."""


class ImportValidationError(EbtScaleError):
    """A file to import is invalid; nothing was written. The message names the row and problem."""

    exit_code = 2


class TrainingDiverged(EbtScaleError):
    """Training produced NaN/inf or an exploding loss."""


class FitError(EbtScaleError):
    """A scaling fit cannot be computed for the given data."""
