"""Faiss over plain arrays: no images, no LMDB, no codec objects."""

from .build import build_index, default_nlist, default_nprobe, search, to_gpu_if_available
from .config import KINDS, IndexConfig, IndexConfigError
from .io import load_index, read_header, save_index

__all__ = ["IndexConfig", "IndexConfigError", "KINDS", "build_index", "default_nlist", "default_nprobe", "search",
           "to_gpu_if_available", "save_index", "load_index", "read_header"]
