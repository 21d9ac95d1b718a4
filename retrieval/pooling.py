"""Global pooling of a CNN feature map into one descriptor: MAC, SPoC, GeM, R-MAC (functions and a module).

Legend: x is a feature map (n, C, H, W) float32 (n images, C channels, H x W cells); the functional poolings
return (n, C) float32 *unnormalised* descriptors; `Pooling` L2-normalises them. Formulas as in cirtorch
(Radenovic et al.) `layers/functional.py`:
  mac  = max over cells,  spoc = mean over cells,  gem = (mean over cells of max(x, eps)^p)^(1/p),
  rmac = sum of the L2-normalised MACs of Tolias et al.'s multi-scale square regions and of the whole map.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError

POOLINGS = frozenset({"mac", "spoc", "gem", "rmac"})


def l2n(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Rows divided by their L2 norm (+ eps, so an all-zero row stays zero): (n, d) -> (n, d)."""
    return x / (torch.linalg.vector_norm(x, dim=-1, keepdim=True) + eps)


def mac(x: torch.Tensor) -> torch.Tensor:
    """Maximum activation of each channel: (n, C, H, W) -> (n, C)."""
    return x.amax(dim=(-2, -1))


def spoc(x: torch.Tensor) -> torch.Tensor:
    """Sum-pooling (as a mean over the H * W cells): (n, C, H, W) -> (n, C)."""
    return x.mean(dim=(-2, -1))


def gem(x: torch.Tensor, p: float = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """Generalised mean of max(x, eps): p = 1 is SPoC, p -> inf tends to MAC. (n, C, H, W) -> (n, C)."""
    return x.clamp(min=eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


def rmac_regions(h: int, w: int, levels: int = 3) -> list[tuple[int, int, int]]:
    """Tolias et al.'s R-MAC regions of an h x w map, as (top, left, side) squares in cells.

    Level l has squares of side floor(2 * min(h, w) / (l + 1)), l per short side and l + extra along the long
    side, where `extra` makes consecutive regions overlap by about 40%, spread evenly from one border to the
    other (cirtorch's sampling, computed exactly: its float32 arithmetic differs on exact ties of the overlap
    criterion and on very elongated maps, where a floor lands just below an integer).
    """
    s = min(h, w)
    # Number of extra regions along the long side: the step count (2..7) whose overlap is closest to 0.4.
    # Exact fractions: overlaps can tie exactly (e.g. 5 x 9, 3 x 11); the first tied count is then taken,
    # where cirtorch's float32 rounding breaks the tie one way or the other.
    overlaps = [abs(1 - Fraction(max(h, w) - s, s * (k - 1)) - Fraction(2, 5)) for k in range(2, 8)]
    extra = overlaps.index(min(overlaps)) + 1
    extra_h, extra_w = (extra, 0) if h > w else (0, extra) if w > h else (0, 0)
    regions = []
    for level in range(1, levels + 1):
        side = 2 * s // (level + 1)
        if side == 0:
            continue
        tops, lefts = _spread(h, side, level + extra_h), _spread(w, side, level + extra_w)
        regions += [(t, left, side) for t in tops for left in lefts]
    return regions


def _spread(length: int, side: int, count: int) -> list[int]:
    """Starts of `count` windows of `side` cells spread evenly over 0..length - side (integer floors)."""
    return [0] if count == 1 else [i * (length - side) // (count - 1) for i in range(count)]


def rmac(x: torch.Tensor, levels: int = 3, eps: float = 1e-6) -> torch.Tensor:
    """Regional MAC: the L2-normalised MAC of the whole map plus that of each `rmac_regions` square, summed.

    (n, C, H, W) -> (n, C), unnormalised (a constant map gives (1 + number of regions) times its unit vector).
    """
    h, w = x.shape[-2:]
    v = l2n(mac(x), eps)
    for t, left, side in rmac_regions(h, w, levels):
        v = v + l2n(mac(x.narrow(-2, t, side).narrow(-1, left, side)), eps)
    return v


class Pooling(nn.Module):
    """Global pooling followed by L2 normalisation: (n, C, H, W) float32 -> (n, C) float32 unit rows.

    method: one of POOLINGS; p: the GeM exponent (used by "gem" only).
    """

    def __init__(self, method: str = "gem", p: float = 3.0) -> None:
        super().__init__()
        if method not in POOLINGS:
            raise ConfigError(f"unknown pooling {method!r}: choose one of {', '.join(sorted(POOLINGS))}")
        self.method = method
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.method == "mac":
            v = mac(x)
        elif self.method == "spoc":
            v = spoc(x)
        elif self.method == "gem":
            v = gem(x, self.p)
        else:
            v = rmac(x)
        return l2n(v)

    def extra_repr(self) -> str:
        return f"method={self.method}" + (f", p={self.p}" if self.method == "gem" else "")


def multiscale(
    fn: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    scales: tuple[float, ...] = (1.0, 0.707, 1.414),
) -> torch.Tensor:
    """Multi-scale descriptor: `fn` on the images resized by each scale, summed over scales, L2-normalised.

    images: (n, 3, H, W) float32; each scale s resizes them to (round(H * s), round(W * s)) bilinearly with
    antialiasing (scale 1 is used as is). fn: (n, 3, h, w) -> (n, d). Returns (n, d) float32 unit rows.
    cirtorch's `extract_ms` averages over scales before normalising (with its default exponent 1); the
    normalised sum is the same vector.
    """
    if not scales:
        raise ValueError("multiscale needs at least one scale")
    h, w = images.shape[-2:]
    v = None
    for s in scales:
        x = images
        if s != 1.0:
            size = (max(1, round(h * s)), max(1, round(w * s)))
            x = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
        y = fn(x)
        v = y if v is None else v + y
    return l2n(v)
