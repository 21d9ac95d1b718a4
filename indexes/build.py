"""Faiss indexes over plain float32 arrays: build one from a config, search it.

Legend: xb (n, d) database vectors, xq (m, d) queries, k neighbours, D (m, k) similarities, I (m, k) ids.
All indexes use inner product on L2-normalised rows, i.e. cosine similarity.
"""

from __future__ import annotations

import math

import faiss
import numpy as np

from .config import FASTSCAN_KINDS, IndexConfig, IndexConfigError


def default_nlist(n: int) -> int:
    """Cells for an IVF over n vectors: ~4*sqrt(n), but at least 39 training points per cell (Faiss's minimum)."""
    return int(max(1, min(4 * math.sqrt(n), n // 39)))


def default_nprobe(nlist: int) -> int:
    """Cells an IVF search visits: an eighth of them, but at least 8 (all of them in a small collection, where
    visiting one of a few cells loses much of the recall for no time gained)."""
    return int(max(1, min(nlist, max(8, round(nlist / 8)))))


def build_index(xb: np.ndarray, ids: np.ndarray, config: IndexConfig) -> faiss.Index:
    """Index ``xb (n, d) float32`` under the 64-bit ``ids (n,)``; rows should be L2-normalised."""
    xb = np.ascontiguousarray(xb, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    n, d = xb.shape
    if config.kind in FASTSCAN_KINDS:
        raise IndexConfigError(f"index kind {config.kind} is built from level indices, not decoded vectors: "
                               "use build_fastscan(levels, idx, ids, config)")
    if config.kind == "flat":
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(d))
    elif config.kind == "ivf":
        nlist = config.nlist or default_nlist(n)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(xb)
        index.nprobe = config.nprobe or default_nprobe(nlist)
    else:  # hnsw has no add_with_ids: map its sequential ids back through IDMap2
        hnsw = faiss.IndexHNSWFlat(d, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index = faiss.IndexIDMap2(hnsw)
    if n:
        index.add_with_ids(xb, ids)
    return index


def search(index, xq: np.ndarray, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """k nearest by inner product: ``D (m, k) float32`` (descending), ``I (m, k) int64`` (-1 where fewer than k).

    ``index`` is a Faiss index or a `FastScanIndex` (which re-ranks its candidates exactly)."""
    check_nprobe(index, nprobe)
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    k = max(1, min(k, index.ntotal)) if index.ntotal else 1
    if not isinstance(index, faiss.Index):  # a FastScanIndex: nprobe applies to this search only
        return index.search(xq, k, nprobe)
    if nprobe is not None:
        faiss.extract_index_ivf(index).nprobe = nprobe
    return index.search(xq, k)


def is_ivf(index) -> bool:
    """Whether ``index`` (a Faiss index or a `FastScanIndex`) has inverted lists, i.e. an ``nprobe``."""
    if not isinstance(index, faiss.Index):
        return index.kind == "ivf-fastscan"
    try:
        faiss.extract_index_ivf(index)
    except RuntimeError:
        return False
    return True


def check_nprobe(index, nprobe: int | None) -> None:
    """An ``nprobe`` is a user's option: refuse it in one line where it means nothing or is not a count."""
    if nprobe is None:
        return
    if not isinstance(nprobe, (int, np.integer)) or nprobe < 1:
        raise IndexConfigError(f"--nprobe must be 1 or more, got {nprobe}")
    if not is_ivf(index):
        raise IndexConfigError("--nprobe sets how many inverted lists a search visits: this database's index has "
                               "none (use it with --index ivf or ivf-fastscan)")


def to_gpu_if_available(index):
    """Move to all GPUs when this Faiss build sees one (faiss-gpu with CUDA); otherwise return it unchanged.
    A `FastScanIndex` becomes an exact GPU flat index over its decoded vectors (GPUs have no 4-bit fast-scan)."""
    if faiss.get_num_gpus() > 0:
        if not isinstance(index, faiss.Index):
            return index.to_gpu()
        return faiss.index_cpu_to_all_gpus(index)
    return index
