"""k-means over plain arrays (Faiss), for code that learns centroids without building an index (NetVLAD)."""

from __future__ import annotations

import faiss
import numpy as np


def kmeans(x: np.ndarray, k: int, niter: int = 20, seed: int = 0) -> np.ndarray:
    """Lloyd's k-means of x (n, d) float32 into k centroids, (k, d) float32; deterministic for a seed.

    Needs n >= k (ValueError otherwise). Every point is used (no subsampling by Faiss).
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or len(x) < k:
        raise ValueError(f"k-means into {k} centroids needs at least {k} rows, got shape {x.shape}")
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, max_points_per_centroid=max(256, len(x) // k + 1),
                      min_points_per_centroid=1, verbose=False)
    km.train(x)
    return np.array(km.centroids, dtype=np.float32)
