"""Faiss over plain arrays: no images, no LMDB, no codec objects."""

from .build import build_index, default_nlist, default_nprobe, search, to_gpu_if_available
from .config import FASTSCAN_KINDS, KINDS, IndexConfig, IndexConfigError
from . import fastscan
from .fastscan import FastScanIndex, build_fastscan, default_fastscan_nprobe
from .io import load_index, read_header, save_index

__all__ = ["fastscan", "IndexConfig", "IndexConfigError", "KINDS", "FASTSCAN_KINDS", "build_index", "build_fastscan",
           "FastScanIndex", "default_nlist", "default_nprobe", "default_fastscan_nprobe", "search",
           "to_gpu_if_available", "save_index", "load_index", "read_header"]
