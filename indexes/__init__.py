"""Faiss over plain arrays: no images, no LMDB, no codec objects.

Importing this package does not import Faiss (``retr --help`` and ``retr info`` stay fast): the configuration
(config.py) and the index files (io.py, which imports Faiss only to save or load one) are plain Python, and the names
that need Faiss (build.py, fastscan.py) are imported from their module on first use. tests/test_startup.py checks it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .config import FASTSCAN_KINDS, KINDS, IndexConfig, IndexConfigError
from .io import load_index, read_header, save_index

if TYPE_CHECKING:
    from . import fastscan
    from .build import build_index, check_nprobe, default_nlist, default_nprobe, is_ivf, search, to_gpu_if_available
    from .fastscan import FastScanIndex, build_fastscan, default_fastscan_nprobe

# name -> the module that defines it, imported (with Faiss) when the name is first read
_LAZY = {
    "build_index": "build", "default_nlist": "build", "default_nprobe": "build", "search": "build",
    "to_gpu_if_available": "build", "check_nprobe": "build", "is_ivf": "build",
    "fastscan": "fastscan", "FastScanIndex": "fastscan", "build_fastscan": "fastscan",
    "default_fastscan_nprobe": "fastscan",
}

__all__ = ["fastscan", "IndexConfig", "IndexConfigError", "KINDS", "FASTSCAN_KINDS", "build_index", "build_fastscan",
           "FastScanIndex", "default_nlist", "default_nprobe", "default_fastscan_nprobe", "search",
           "to_gpu_if_available", "save_index", "load_index", "read_header", "check_nprobe", "is_ivf"]


def __getattr__(name: str):
    try:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = module if name == _LAZY[name] else getattr(module, name)
    globals()[name] = value  # later reads skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
