"""Global pooling of a CNN feature map into one descriptor: MAC, SPoC, GeM, R-MAC (functions and a module).

Legend: x is a feature map (n, C, H, W) float32 (n images, C channels, H x W cells); the functional poolings
return (n, C) float32 *unnormalised* descriptors; `Pooling` L2-normalises them. Formulas as in cirtorch
(Radenovic et al.) `layers/functional.py`:
  mac  = max over cells,  spoc = mean over cells,  gem = (mean over cells of max(x, eps)^p)^(1/p),
  rmac = sum of the L2-normalised MACs of Tolias et al.'s multi-scale square regions and of the whole map.

NetVLAD (Arandjelovic et al., learnt: K centres c_k (K, C)) is a module, `NetVLAD`, built by `init_netvlad` from
k-means of local descriptors; its output is (n, K * C) float32 unit rows. It is not in POOLINGS (which name the
parameter-free poolings an `EncoderConfig` can select by name): its centres travel in a compressed model file.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..indexes.kmeans import kmeans
from .errors import ConfigError
from .names import LEARNT_POOLINGS, POOLINGS  # noqa: F401  (torch-free, re-exported)


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


# --- NetVLAD ---------------------------------------------------------------------------------------------------


class NetVLAD(nn.Module):
    """NetVLAD pooling: (n, C, H, W) float32 feature map -> (n, K * C) float32 unit rows.

    Each local descriptor x_i (C,) is L2-normalised, softly assigned to the K centres with
    a_k(x_i) = softmax_k(w_k . x_i + b_k), initialised to w_k = 2 alpha c_k, b_k = -alpha |c_k|^2 (the softmax of
    -alpha |x_i - c_k|^2); v_k = sum_i a_k(x_i) (x_i - c_k) is L2-normalised per centre (intra-normalisation),
    then the concatenation (k-major: v_0, v_1, ...) is L2-normalised. Parameters: `centroids` (K, C) and the 1x1
    convolution `assign` (weight (K, C, 1, 1), bias (K,)), all trained, as in Arandjelovic et al.'s vladv2.
    """

    def __init__(self, dim: int, k: int = 64, alpha: float = 100.0) -> None:
        super().__init__()
        if k < 1 or dim < 1:
            raise ConfigError(f"NetVLAD needs at least one cluster and one channel, got K={k}, C={dim}")
        self.k, self.dim, self.alpha = k, dim, float(alpha)
        self.centroids = nn.Parameter(torch.zeros(k, dim))
        self.assign = nn.Conv2d(dim, k, kernel_size=1, bias=True)
        with torch.no_grad():
            self.assign.weight.zero_()
            self.assign.bias.zero_()

    @property
    def output_dim(self) -> int:
        return self.k * self.dim

    def set_centroids(self, c: torch.Tensor, alpha: float) -> None:
        """Set the centres c (K, C) and the assignment they imply for a softness alpha (module doc)."""
        c = torch.as_tensor(c, dtype=torch.float32)
        if tuple(c.shape) != (self.k, self.dim):
            raise ValueError(f"centroids must be ({self.k}, {self.dim}), got {tuple(c.shape)}")
        self.alpha = float(alpha)
        with torch.no_grad():
            self.centroids.copy_(c)
            self.assign.weight.copy_(2.0 * alpha * c[:, :, None, None])
            self.assign.bias.copy_(-alpha * (c * c).sum(dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x, dim=1)
        a = F.softmax(self.assign(x).flatten(2), dim=1)  # (n, K, HW)
        xf = x.flatten(2)  # (n, C, HW)
        # sum_i a_k(x_i) x_i - (sum_i a_k(x_i)) c_k, for all k at once: (n, K, C)
        v = torch.bmm(a, xf.transpose(1, 2)) - a.sum(dim=2, keepdim=True) * self.centroids[None]
        v = F.normalize(v, dim=2)
        return F.normalize(v.flatten(1), dim=1)

    def extra_repr(self) -> str:
        return f"k={self.k}, dim={self.dim}, alpha={self.alpha:g}"


def local_descriptors(
    backbone: nn.Module, images: Iterable[torch.Tensor], per_image: int = 100, seed: int = 0
) -> np.ndarray:
    """L2-normalised local descriptors of the backbone's feature maps: up to `per_image` cells drawn (seeded)
    from each image's map. images: preprocessed (3, h, w) float32 tensors. Returns (m, C) float32."""
    rng = np.random.default_rng(seed)
    device = next(backbone.parameters()).device
    out = []
    with torch.no_grad():
        for im in images:
            y = backbone(im[None].to(device))[0].float()  # (C, h, w)
            x = F.normalize(y.flatten(1).T, dim=1).cpu().numpy()  # (h * w, C)
            pick = rng.choice(len(x), size=min(per_image, len(x)), replace=False)
            out.append(x[np.sort(pick)])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def init_netvlad(
    backbone: nn.Module, images: Iterable[torch.Tensor], k: int = 64, per_image: int = 100,
    alpha: float | None = None, seed: int = 0,
) -> NetVLAD:
    """A NetVLAD over `backbone`'s conv map whose centres are the k-means (Faiss) of sampled local descriptors.

    backbone: maps (n, 3, H, W) -> (n, C, h, w) (a `Backbone` cut at `conv`); images: preprocessed (3, h, w)
    float32 tensors (the training images); per_image: local descriptors sampled from each image.
    alpha: softness of the assignment; None derives it from the data as Arandjelovic et al.'s code does, so that
    a descriptor's nearest centre gets 100 times the weight of its second nearest on average:
    alpha = ln(100) / mean(d2_second - d2_first), squared distances to the centres.
    Raises ConfigError when the images give fewer than k local descriptors.
    """
    x = local_descriptors(backbone, images, per_image, seed)
    if len(x) < max(k, 2):
        raise ConfigError(f"NetVLAD with K={k} clusters needs at least {max(k, 2)} local descriptors, the training "
                          f"images gave {len(x)}: use more (or larger) images, or fewer clusters")
    c = kmeans(x, k, seed=seed)
    if alpha is None:
        # |x - c|^2 = |x|^2 + |c|^2 - 2 x.c with |x| = 1: (m, K) without an (m, K, C) temporary
        d2 = np.sort(1.0 + (c * c).sum(1)[None] - 2.0 * (x @ c.T), axis=1)
        gap = float(np.mean(d2[:, 1] - d2[:, 0])) if k > 1 else 0.0
        alpha = float(np.log(100.0) / gap) if gap > 0 else 100.0
    pool = NetVLAD(x.shape[1], k)
    pool.set_centroids(torch.from_numpy(c), alpha)
    return pool
