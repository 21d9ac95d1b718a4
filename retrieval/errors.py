"""Errors a user can cause. Each message is one line that says what to do; the CLI prints it and exits 1.

Bugs are not RetrError: they stay ordinary exceptions with their traceback.
"""


class RetrError(Exception):
    """Base class of every error a user can cause (bad file, bad option, missing database...)."""


class ConfigError(RetrError):
    """An option or a stored configuration is invalid or contradicts another one."""


class ImageError(RetrError):
    """An image cannot be read or decoded."""


class WeightsUnavailable(RetrError):
    """Pretrained weights cannot be loaded (offline, missing file, wrong architecture)."""


class DatabaseError(RetrError):
    """A database is missing, corrupt, locked by another writer, or of an unknown format version."""


class DatasetError(RetrError):
    """A benchmark dataset's layout is incomplete: the message names the missing file."""
