"""Neighbours above a score: Faiss range search, for every index kind the engine builds.

Legend: xq (m, d) L2-normalised queries, t a cosine threshold, lims (m + 1,) int64 offsets, D (lims[-1],) float32
scores, I (lims[-1],) int64 ids; the neighbours of query i are I[lims[i]:lims[i + 1]] (CSR layout, as Faiss's
``range_search``), best first.
"""

from __future__ import annotations

import faiss
import numpy as np

from .build import search

_K0 = 32  # neighbours asked first where a range search is done by growing k-NN searches


def range_search(index, xq: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every stored vector whose score with a query is at least ``threshold``: ``(lims, D, I)``, each query's
    neighbours best first (ties in id order).

    ``index``: a Faiss index (flat, IVF, HNSW: Faiss's own range search, as exact as the index's k-NN search) or a
    `FastScanIndex`, which has none: its k-NN search is repeated with k doubled for the queries whose k-th score
    still reaches the threshold, so the result is what its k-NN search finds above the threshold."""
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    m, n = len(xq), int(index.ntotal)
    if m == 0 or n == 0:
        return np.zeros(m + 1, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64)
    if isinstance(index, faiss.Index):
        lims, D, I = index.range_search(xq, float(threshold))
        R = np.repeat(np.arange(m), np.diff(lims.astype(np.int64)))
    else:
        parts = []
        todo, k = np.arange(m), min(_K0, n)
        while len(todo):
            D, I = search(index, xq[todo], k)
            full = (D[:, -1] >= threshold) & (I[:, -1] >= 0) & (k < n)
            done = ~full
            parts.append((np.repeat(todo[done], k), D[done].ravel(), I[done].ravel()))
            todo, k = todo[full], min(2 * k, n)
        R, D, I = (np.concatenate(a) for a in zip(*parts))
    keep = (D >= threshold) & (I >= 0)
    R, D, I = R[keep], D[keep].astype(np.float32), I[keep].astype(np.int64)
    order = np.lexsort((I, -D, R))  # by query, then best first, ties in id order
    R, D, I = R[order], D[order], I[order]
    lims = np.searchsorted(R, np.arange(m + 1)).astype(np.int64)
    return lims, D, I


__all__ = ["range_search"]
