"""Row-vector helpers shared by every floor above (one definition of L2 normalisation)."""

from __future__ import annotations

import numpy as np

EPS = 1e-12  # a zero row stays zero instead of becoming NaN


def l2n(x: np.ndarray) -> np.ndarray:
    """Rows of ``x (m, d)`` divided by their L2 norm (at least ``EPS``), as float32."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), EPS)
