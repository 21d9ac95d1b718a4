"""Compressing a network's weights: magnitude pruning and k-bit weight quantization with per-layer codebooks.

As in "Compressing Deep Neural Networks for Recognizing Places" (Saha, Varma, Jawahar, ACPR 2017), after
Han et al.'s Deep Compression: weights with |w| < threshold become 0 (pruning, layer by layer), and each layer's
remaining weights are replaced by the nearest of 2**bits values of that layer's codebook (quantization), so a
weight is stored as a bits-wide code. Decoding is a table look-up: w = codebook[code].

What is compressed: every floating-point tensor with at least 2 dimensions (convolution and linear weights,
NetVLAD's centres and assignment weights) - the W of the paper's L1 term. Biases, norm scales and buffers
(1-D, few, and sensitive) stay dense float32.

Legend: w a layer's weights flattened (n,), mask (n,) bool the kept weights (|w| >= t), n_kept = mask.sum(),
L = 2**bits codebook entries, codes (n_kept,) uint8 in [0, L).

Importable without torch (`retr model`'s options read CODEBOOKS and PAPER_SETTINGS at start-up): the functions that
need torch import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .codec import pack_bits, unpack_bits
from .errors import ConfigError

if TYPE_CHECKING:
    import torch

CODEBOOKS = ("linear", "kmeans")
# The paper's table rows: (weight bits, pruning threshold).
PAPER_SETTINGS: tuple[tuple[int, float], ...] = ((8, 0.001), (8, 0.005), (8, 0.01), (8, 0.05), (5, 0.005), (5, 0.01))
MIN_BITS, MAX_BITS = 2, 8
_PACK_CHUNK = 1 << 20  # weights packed per call: a multiple of 8, so every chunk fills whole bytes


@dataclass(frozen=True)
class CompressionConfig:
    """threshold: prune |w| < threshold (0 prunes nothing); bits: 2-8 bits per kept weight, None keeps float32;
    codebook: "linear" (2**bits evenly spaced values from the layer's smallest to its largest kept weight) or
    "kmeans" (1-D k-means of the kept weights, initialised linearly as Deep Compression recommends)."""

    threshold: float = 0.0
    bits: int | None = None
    codebook: str = "linear"

    def __post_init__(self) -> None:
        if not isinstance(self.threshold, (int, float)) or not np.isfinite(self.threshold) or self.threshold < 0:
            raise ConfigError(f"pruning threshold must be a finite number >= 0, got {self.threshold!r}")
        if self.bits is not None and (isinstance(self.bits, bool) or not isinstance(self.bits, int)
                                      or not MIN_BITS <= self.bits <= MAX_BITS):
            raise ConfigError(f"weight bits must be an integer in [{MIN_BITS}, {MAX_BITS}] (or 32 for float32), "
                              f"got {self.bits!r}")
        if self.codebook not in CODEBOOKS:
            raise ConfigError(f"unknown codebook {self.codebook!r}: choose one of {', '.join(CODEBOOKS)}")
        object.__setattr__(self, "threshold", float(self.threshold))

    def to_dict(self) -> dict:
        return {"threshold": self.threshold, "bits": self.bits, "codebook": self.codebook}

    @classmethod
    def from_dict(cls, d: dict) -> CompressionConfig:
        unknown = set(d) - {"threshold", "bits", "codebook"}
        if unknown:
            raise ConfigError(f"unknown compression option(s): {', '.join(sorted(unknown))}")
        return cls(**d)


def is_compressible(t: torch.Tensor) -> bool:
    """True for the tensors pruning and quantization apply to: floating point with >= 2 dimensions."""
    return t.is_floating_point() and t.dim() >= 2


# --- pruning ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerStats:
    """One tensor: n weights, of which `pruned` are zero after pruning."""

    name: str
    n: int
    pruned: int

    @property
    def percent(self) -> float:
        return 100.0 * self.pruned / self.n if self.n else 0.0


@dataclass(frozen=True)
class PruneReport:
    """Per-layer and total counts of pruned weights over the compressible tensors."""

    layers: tuple[LayerStats, ...]

    @property
    def n(self) -> int:
        return sum(s.n for s in self.layers)

    @property
    def pruned(self) -> int:
        return sum(s.pruned for s in self.layers)

    @property
    def percent(self) -> float:
        """Percentage of the compressible weights that are pruned, 0-100."""
        return 100.0 * self.pruned / self.n if self.n else 0.0

    def to_dict(self) -> dict:
        return {"n": self.n, "pruned": self.pruned, "percent": self.percent,
                "layers": [{"name": s.name, "n": s.n, "pruned": s.pruned, "percent": s.percent}
                           for s in self.layers]}

    @classmethod
    def from_dict(cls, d: dict) -> PruneReport:
        return cls(tuple(LayerStats(s["name"], int(s["n"]), int(s["pruned"])) for s in d["layers"]))


def prune_(state: dict[str, torch.Tensor], threshold: float) -> PruneReport:
    """Set to 0, in place, every weight with |w| < threshold of the compressible tensors of `state`
    (name -> tensor, e.g. a module's parameters); other tensors are untouched. Returns the counts."""
    import torch

    stats = []
    with torch.no_grad():
        for name, t in state.items():
            if not is_compressible(t):
                continue
            t.masked_fill_(t.abs() < threshold, 0.0)
            stats.append(LayerStats(name, t.numel(), int((t.abs() < threshold).sum()) if threshold > 0 else 0))
    return PruneReport(tuple(stats))


# --- quantization ----------------------------------------------------------------------------------------------


def linear_codebook(w: np.ndarray, bits: int) -> np.ndarray:
    """L = 2**bits values lo + i * (hi - lo) / (L - 1), lo / hi the min / max of w (n,): (L,) float32, sorted.
    Rounding to the nearest value errs by at most half a step (hi - lo) / (L - 1) / 2. Empty w: all zeros."""
    L = 1 << bits
    if w.size == 0:
        return np.zeros(L, np.float32)
    lo, hi = float(w.min()), float(w.max())
    return (lo + np.arange(L, dtype=np.float64) * ((hi - lo) / (L - 1))).astype(np.float32)


def kmeans_codebook(w: np.ndarray, bits: int, niter: int = 20) -> np.ndarray:
    """1-D k-means (Lloyd) of w (n,) into L = 2**bits sorted values, (L,) float32, from the linear codebook.

    An empty cluster keeps its previous value. Deterministic (no random initialisation).
    """
    c = linear_codebook(w, bits).astype(np.float64)
    x = w.astype(np.float64)
    for _ in range(niter):
        code = assign_codes(x, c)
        count = np.bincount(code, minlength=len(c))
        total = np.bincount(code, weights=x, minlength=len(c))
        new = np.where(count > 0, total / np.maximum(count, 1), c)
        new.sort()
        if np.array_equal(new, c):
            break
        c = new
    return c.astype(np.float32)


def assign_codes(w: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Index of the nearest codebook value of each weight: w (n,), codebook (L,) sorted -> (n,) uint8.
    Exact ties go to the lower value."""
    c = np.asarray(codebook, dtype=np.float64)
    mid = (c[1:] + c[:-1]) / 2.0
    return np.searchsorted(mid, np.asarray(w, dtype=np.float64), side="left").astype(np.uint8)


def quantize_values(w: np.ndarray, bits: int, codebook: str = "linear") -> tuple[np.ndarray, np.ndarray]:
    """w (n,) float32 -> (codes (n,) uint8, codebook (2**bits,) float32); w ~= codebook[codes]."""
    cb = linear_codebook(w, bits) if codebook == "linear" else kmeans_codebook(w, bits)
    return assign_codes(w, cb), cb


# --- a compressed tensor and bit packing ------------------------------------------------------------------------


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """(n,) uint8 codes < 2**bits -> ceil(n * bits / 8) uint8 bytes, `codec.pack_bits`'s little-endian order."""
    parts = [pack_bits(codes[i:i + _PACK_CHUNK][None], bits)[0] for i in range(0, len(codes), _PACK_CHUNK)]
    return np.concatenate(parts) if parts else np.zeros(0, np.uint8)


def unpack_codes(data: np.ndarray, n: int, bits: int) -> np.ndarray:
    """Inverse of `pack_codes`: bytes -> (n,) uint8 codes."""
    step = _PACK_CHUNK * bits // 8
    parts = [unpack_bits(data[j * step:(j + 1) * step][None], min(_PACK_CHUNK, n - i), bits)[0]
             for j, i in enumerate(range(0, n, _PACK_CHUNK))]
    return np.concatenate(parts).astype(np.uint8) if parts else np.zeros(0, np.uint8)


@dataclass
class CompressedTensor:
    """One stored tensor.

    Dense (`codes` and `values` None): `dense` holds the whole array in its own dtype.
    Compressed: `mask` (n,) bool of kept weights, None when every weight is kept (no index stored); the kept
    weights in flat (C) order as `codes` (n_kept,) uint8 into `codebook` (2**bits,) float32, or as `values`
    (n_kept,) float32 when bits is None.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    dense: np.ndarray | None = None
    mask: np.ndarray | None = None
    bits: int | None = None
    codes: np.ndarray | None = None
    codebook: np.ndarray | None = None
    values: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def n_kept(self) -> int:
        return self.n if self.mask is None else int(self.mask.sum())

    def decode(self) -> np.ndarray:
        """The tensor as stored: (shape) in its dtype; pruned weights are 0, kept ones codebook[code]."""
        if self.dense is not None:
            return self.dense.reshape(self.shape)
        kept = self.values if self.bits is None else self.codebook[self.codes]
        if self.mask is None:
            return kept.astype(np.float32).reshape(self.shape)
        out = np.zeros(self.n, np.float32)
        out[self.mask] = kept
        return out.reshape(self.shape)


def compress_tensor(name: str, t: torch.Tensor, config: CompressionConfig) -> CompressedTensor:
    """Prune and quantize one tensor (not in place). Tensors that are not `is_compressible` stay dense."""
    a = t.detach().cpu().contiguous().numpy()
    if not is_compressible(t):
        return CompressedTensor(name, tuple(a.shape), str(a.dtype), dense=a.copy())
    w = a.astype(np.float32).reshape(-1)
    keep = np.abs(w) >= config.threshold
    mask = None if keep.all() else keep
    kept = w if mask is None else w[keep]
    if config.bits is None:
        return CompressedTensor(name, tuple(a.shape), "float32", mask=mask, values=kept.copy())
    codes, cb = quantize_values(kept, config.bits, config.codebook)
    return CompressedTensor(name, tuple(a.shape), "float32", mask=mask, bits=config.bits, codes=codes, codebook=cb)


def compress_state(
    state: dict[str, torch.Tensor], config: CompressionConfig
) -> tuple[dict[str, CompressedTensor], PruneReport]:
    """Prune and quantize, in place, the compressible tensors of `state` (name -> tensor): afterwards each holds
    exactly its decoded values, so the module computes what a model loaded from the stored tensors computes.
    Returns the stored form of every tensor of `state` (same order) and the pruning counts."""
    import torch

    out, stats = {}, []
    with torch.no_grad():
        for name, t in state.items():
            c = compress_tensor(name, t, config)
            out[name] = c
            if c.dense is None:
                t.copy_(torch.from_numpy(c.decode()).to(t.dtype))
                stats.append(LayerStats(name, c.n, c.n - c.n_kept))
    return out, PruneReport(tuple(stats))
