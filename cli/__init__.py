"""The ``retr`` command line: thin click commands over the library."""

from . import demo as _demo  # noqa: F401  (each module registers its commands on `main`)
from . import dedup as _dedup  # noqa: F401
from . import eval as _eval  # noqa: F401
from . import model as _model  # noqa: F401
from . import scale as _scale  # noqa: F401
from . import serve as _serve  # noqa: F401
from .main import main

__all__ = ["main"]
