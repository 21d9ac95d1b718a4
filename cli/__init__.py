"""The ``retr`` command line: thin click commands over the library."""

from . import demo as _demo  # noqa: F401  (each module registers its commands on `main`)
from .main import main

__all__ = ["main"]
