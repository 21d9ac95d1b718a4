"""The paper's stress grid (sections 2.1-2.3 and 3), generic over the task that scores the stressed features.

Every experimental point stresses the training features xtr and the test features xte with a transform T
learned on xtr only, L2-normalises both ("We l2-normalize those feature vectors") and hands them to a
score function (an SVM's mAP for classification, a retrieval mAP per protocol...). Experiments:

  identity   T(x) = x: the baseline.
  dr1        keep p_i random dimensions, p_i = floor(n (21 - i) / 20), i = 1..20 (`dr1_sizes`); each size
             repeated `reps` times, the codec's dr1 reduction seeded with the repetition index 0..reps-1.
  dr2        the same sizes by PCA fitted on xtr. pca_projection "centred" projects x - mean (the codec's
             pca); "uncentred" projects x itself, as the paper's MATLAB code (`feature_matrix * pca_matrix`,
             the covariance centred, the projection not). Uncentred PCA at full rank is a rotation, so it
             reproduces the identity scores; centred PCA is a translation too, which the L2 normalisation
             does not forget.
  q1, q2     decode(encode(x)) with h = 2..30 levels, one range for all dimensions (q1) or one per
             dimension (q2), min / max of xtr (a constant dimension decodes to its constant).
  qb64, qb32 erase the k least significant bits of each value's float64 (k = 0..64) or float32
             (k = 0..32) representation: mantissa first, then exponent, then sign ("qb" runs both).
  fc         dr2 then q2: PCA sizes x levels, the grid of the paper's FC figure (`fc_grid`).
Beyond the paper:
  q1-<r>, q2-<r>, fc-<r>   the same with a robust quantizer range r from `ranges` (default quantile:0.001,
             i.e. the 0.1% and 99.9% quantiles, and sigma:3, mean +- 3 standard deviations).
  pq, opq    Faiss product quantization of x with M sub-quantizers of 2**nbits centroids (M bytes at
             nbits = 8), trained on xtr; opq first learns an OPQ rotation to min(n, 4M) dimensions (Faiss'
             OPQ{M}_{4M}) and scores the rotated reconstructions (inner products as in that space).

Every point is cached as JSON under cache_dir/<experiment>/ as soon as it is scored; a rerun scores only
the missing points. Points whose stressed features are bit-identical to an already scored pair (e.g. qb64
with k <= 29 on float32 features, dr1 at p = n) reuse that score.

Legend: m_tr / m_te training / test vectors, n input dimensions, p kept dimensions, h levels, k erased bits,
M sub-quantizers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..retrieval import codec
from ..retrieval.errors import ConfigError
from ..retrieval.fileio import atomic_write

STRESS_VERSION = 1
PAPER_EXPERIMENTS = ("dr1", "dr2", "q1", "q2", "qb", "fc")
PCA_PROJECTIONS = ("centred", "uncentred")
ROBUST_RANGES = {"quantile": "quantile:0.001", "sigma": "sigma:3"}
# Default PQ sizes M (bytes at 8 bits): Faiss trains M k-means of 256 centroids, each costing about the same
# whatever n / M is, so M = 256 already takes ~0.5-2 min on 2 cores for 5000 training vectors (M = 2048:
# over 10 min). OPQ alternates 50 such trainings (4 k-means iterations each) with SVDs: capped lower.
PQ_DEFAULT_BYTES = (8, 16, 32, 64, 128, 256)
OPQ_MAX_OUT = 512
_BASES = ("dr1", "dr2", "q1", "q2", "qb", "qb64", "qb32", "fc", "pq", "opq")
_RANGED = ("q1", "q2", "fc")

ScoreFn = Callable[[np.ndarray, np.ndarray], Mapping[str, float]]


# ---------------------------------------------------------------------------------------------------------
# Grids and transforms


def dr1_sizes(n: int) -> list[int]:
    """The 20 DR sizes of the paper, largest first: p_i = floor(n (21 - i) / 20), i = 1..20."""
    return [n * (21 - i) // 20 for i in range(1, 21)]


def fc_grid(n: int, coarse: bool = False) -> tuple[list[int], list[int]]:
    """(PCA sizes, levels) of the FC experiment.

    The paper's FC figure (fc_vgg-m_voc_2007.csv): p = floor(n k / 10), k = 1..9, times h = 2..30 (261
    points). coarse: k in (1, 2, 3, 5) times h in (2, 3, 4, 6, 8, 16) (24 points).
    """
    if coarse:
        return [n * k // 10 for k in (1, 2, 3, 5)], [2, 3, 4, 6, 8, 16]
    return [n * k // 10 for k in range(1, 10)], list(range(2, 31))


def erase_bits(x: np.ndarray, k: int, width: int = 64) -> np.ndarray:
    """Zero the k lowest bits of each value's IEEE-754 representation (Q-B).

    x: any real array; width 64: as float64 (52 mantissa, 11 exponent, 1 sign bit), 0 <= k <= 64;
    width 32: as float32 (23, 8, 1), 0 <= k <= 32. Returns a new float64 / float32 array. Erasing only ever
    clears bits, so a finite value stays finite: it is truncated towards zero, then its exponent shrinks,
    and at k = width everything is 0.
    """
    if width not in (32, 64):
        raise ValueError(f"width must be 32 or 64, not {width}")
    if not 0 <= k <= width:
        raise ValueError(f"k must be in [0, {width}], not {k}")
    ftype, utype = (np.float64, np.uint64) if width == 64 else (np.float32, np.uint32)
    u = np.ascontiguousarray(x, dtype=ftype).view(utype)
    mask = utype(((1 << width) - 1) ^ ((1 << k) - 1))
    return (u & mask).view(ftype)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows of x (m, d) divided by their L2 norm, computed in float64; returns float32. Zero rows stay 0."""
    x = np.asarray(x)
    out = np.empty(x.shape, np.float32)
    step = max(1, (1 << 21) // (8 * max(x.shape[1], 1)))  # rows per block of ~2 MB of float64: stays in cache
    for i in range(0, len(x), step):
        b = x[i : i + step].astype(np.float64)
        norm = np.linalg.norm(b, axis=1, keepdims=True)
        b /= np.where(norm > 0, norm, 1.0)
        out[i : i + step] = b
    return out


# ---------------------------------------------------------------------------------------------------------
# Results


@dataclass
class Point:
    """One experimental point.

    experiment: "identity" | "dr1" | "dr2" | "q1" | "q2" | "qb64" | "qb32" | "fc" | "q2-sigma" | "pq" ...
    dims: dimensions of the stressed vector (n for quantization-only experiments; opq: its output size);
    levels: h for q1 / q2 / fc (and their range variants), else None; removed_bits: k for qb64 / qb32;
    rep: repetition of dr1 (each its own Point; an averaged dr1 Point has rep None); scores: per metric,
    0-100; bytes_per_vector: code size (float32: 4 dims; q / fc: the codec's code_size; qb: (64 - k) / 8
    dims or (32 - k) / 8 dims; pq / opq: ceil(M nbits / 8)); compression: 1 - bytes_per_vector / (4 n),
    relative to the float32 original (negative for qb64 below 32 erased bits).
    """

    experiment: str
    dims: int
    levels: int | None
    removed_bits: int | None
    rep: int | None
    scores: dict[str, float]
    bytes_per_vector: float
    compression: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Point:
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(d, Mapping) or set(d) != names:
            raise ConfigError(f"a stress point must have exactly the fields {', '.join(sorted(names))}")
        return cls(**{**d, "scores": {str(k): float(v) for k, v in d["scores"].items()}})


def _sort_key(p: Point) -> tuple:
    return (p.dims, p.levels or 0, p.removed_bits or 0, p.bytes_per_vector, p.rep or 0)


@dataclass
class GridResult:
    """All points of one grid: layer name, n input dimensions, metric names (score_fn's keys), the baseline
    (identity) scores, the points (identity included, in computation order) and the settings that made them.
    """

    layer: str
    n: int
    metric_names: list[str]
    baseline: dict[str, float]
    points: list[Point]
    settings: dict = field(default_factory=dict)

    @property
    def experiments(self) -> list[str]:
        """Experiment names in the order they were run, identity first."""
        return list(dict.fromkeys(p.experiment for p in self.points))

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": STRESS_VERSION, "layer": self.layer, "n": self.n,
            "metric_names": list(self.metric_names), "baseline": dict(self.baseline),
            "points": [p.to_dict() for p in self.points], "settings": self.settings,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GridResult:
        names = {"version", "layer", "n", "metric_names", "baseline", "points", "settings"}
        if not isinstance(d, Mapping) or set(d) != names:
            raise ConfigError(f"a stress result must have exactly the fields {', '.join(sorted(names))}")
        if d["version"] != STRESS_VERSION:
            raise ConfigError(f"stress result format {d['version']} is not {STRESS_VERSION}; rerun the grid")
        return cls(
            layer=d["layer"], n=int(d["n"]), metric_names=list(d["metric_names"]),
            baseline={str(k): float(v) for k, v in d["baseline"].items()},
            points=[Point.from_dict(p) for p in d["points"]], settings=dict(d["settings"]),
        )  # fmt: skip

    def save(self, path: str | os.PathLike) -> Path:
        """Write to_dict() as JSON, atomically; returns the path."""
        return _write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> GridResult:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise ConfigError(f"stress result {path} does not exist; run the grid first") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"stress result {path} is not valid JSON ({e}); rerun the grid") from None

    def aggregate(self, experiment: str) -> list[Point]:
        """The experiment's points sorted by (dims, levels, removed_bits, bytes), repetitions averaged:
        one Point per setting with rep None and each score the mean over repetitions (NaN-aware)."""
        groups: dict[tuple, list[Point]] = {}
        for p in sorted((p for p in self.points if p.experiment == experiment), key=_sort_key):
            groups.setdefault((p.dims, p.levels, p.removed_bits, p.bytes_per_vector), []).append(p)
        out = []
        for pts in groups.values():
            scores = {m: _nanmean([p.scores.get(m, math.nan) for p in pts]) for m in pts[0].scores}
            out.append(dataclasses.replace(pts[0], rep=None, scores=scores))
        return out

    def table(self, experiment: str, metric: str) -> list[dict[str, Any]]:
        """Rows of one experiment for one metric, as the paper's CSVs (dr1: mean and SD over repetitions).

        Each row: dims, levels, removed_bits, bytes_per_vector, compression, score (the mean over
        repetitions), sd (sample standard deviation, ddof = 1, as MATLAB's std; 0 for a single run), reps.
        Sorted by dims, then levels, then removed_bits.
        """
        rows = []
        for agg in self.aggregate(experiment):
            runs = [
                p.scores.get(metric, math.nan)
                for p in self.points
                if p.experiment == experiment
                and (p.dims, p.levels, p.removed_bits, p.bytes_per_vector)
                == (agg.dims, agg.levels, agg.removed_bits, agg.bytes_per_vector)
            ]
            sd = float(np.std(runs, ddof=1)) if len(runs) > 1 else 0.0
            rows.append(
                dict(
                    dims=agg.dims, levels=agg.levels, removed_bits=agg.removed_bits,
                    bytes_per_vector=agg.bytes_per_vector, compression=agg.compression,
                    score=agg.scores.get(metric, math.nan), sd=sd, reps=len(runs),
                )  # fmt: skip
            )
        return rows


def _nanmean(values: Sequence[float]) -> float:
    ok = [v for v in values if not math.isnan(v)]
    return float(np.mean(ok)) if ok else math.nan


def summary_table(
    result: GridResult, metric: str, budgets: Sequence[float] = (1, 2, 3, 4, 5)
) -> dict[str, dict[float, Point | None]]:
    """The paper's Table 3: per experiment and loss budget b (percent of the baseline score, relative),
    the smallest representation whose score >= baseline * (1 - b / 100), or None if no point keeps it.

    Smallest = fewest bytes per vector, ties broken by fewer dimensions then fewer levels: fewest
    dimensions for DR, fewest levels for Q (h = 3 and 4 both cost 2 bits; 3 wins), most erased bits for
    Q-B, fewest bytes for FC / PQ. dr1 is judged on its mean over repetitions (the returned Point is the
    averaged one, rep None). The identity experiment is left out.
    """
    base = result.baseline[metric]
    out: dict[str, dict[float, Point | None]] = {}
    for exp in result.experiments:
        if exp == "identity":
            continue
        pts = sorted(result.aggregate(exp), key=lambda p: (p.bytes_per_vector, p.dims, p.levels or 0))
        out[exp] = {}
        for b in budgets:
            keep = [p for p in pts if p.scores.get(metric, math.nan) >= base * (1 - b / 100)]
            out[exp][b] = keep[0] if keep else None
    return out


# ---------------------------------------------------------------------------------------------------------
# The grid


@dataclass
class _Task:
    """One point to compute: its identity, and how to stress (xtr, xte) -> (xtr', xte', bytes per vector)."""

    experiment: str
    key: str
    dims: int
    levels: int | None = None
    removed_bits: int | None = None
    rep: int | None = None
    stress: Callable[[], tuple[np.ndarray, np.ndarray, float]] | None = None


def _parse_experiment(name: str, ranges: Mapping[str, str]) -> tuple[str, str]:
    """'q2-sigma' -> ('q2', 'sigma:3'), 'fc' -> ('fc', 'minmax'). Raises ConfigError for unknown names."""
    base, sep, rname = name.partition("-")
    if base not in _BASES or (sep and (base not in _RANGED or rname not in ranges)):
        ranged = [f"{b}-{r}" for b in _RANGED for r in ranges]
        raise ConfigError(f"unknown stress experiment {name!r}; use {', '.join(_BASES + tuple(ranged))}")
    spec = ranges[rname] if sep else "minmax"
    codec.parse_range(spec)
    return base, spec


def _slug(spec: str) -> str:
    return spec.replace(":", "")


def _fingerprint(xtr: np.ndarray, xte: np.ndarray, tag: str, xfit: np.ndarray | None = None) -> str:
    h = hashlib.sha256(f"retr-stress-{STRESS_VERSION}|{tag}".encode())
    for a in (xtr, xte) if xfit is None else (xtr, xte, xfit):
        h.update(f"|{a.dtype.str}{a.shape}|".encode())
        h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()


def _digest(a: np.ndarray, b: np.ndarray) -> str:
    # SHA-256: ~1.7 GB/s here (hardware SHA instructions), blake2b ~0.6; every grid point hashes ~160 MB
    h = hashlib.sha256()
    for x in (a, b):
        h.update(f"{x.dtype.str}{x.shape}".encode())
        h.update(np.ascontiguousarray(x).data)
    return h.hexdigest()


def _write_json(path: Path, obj: Any) -> Path:
    return atomic_write(path, json.dumps(obj, indent=1).encode())


def _read_cached(path: Path, fingerprint: str) -> Point | None:
    """The cached point at path if it was made from the same inputs, else None (missing or stale)."""
    try:
        d = json.loads(path.read_text())
        if d.get("version") == STRESS_VERSION and d.get("fingerprint") == fingerprint:
            return Point.from_dict(d["point"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ConfigError):
        pass  # unreadable or half-written by an older version: recompute the point
    return None


def _quantize(
    y_tr: np.ndarray, y_te: np.ndarray, cfg: codec.CodecConfig, y_fit: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """decode(encode(.)) of both splits with a codec fitted on y_fit (default y_tr); and its code size in bytes.

    The codes are not packed into bytes and unpacked again: packing is lossless (tests/test_codec.py), so the
    level values of the quantized indices are decode(encode(.)) exactly (tests/test_stress.py)."""
    params = codec.fit(y_tr if y_fit is None else y_fit, cfg)

    def reconstruct(y: np.ndarray) -> np.ndarray:
        if cfg.reduction != "none":  # (the grid's codecs quantize already reduced features: no copy to make)
            y = codec.reduce(params, y)
        return codec.dequantize(params, codec.quantize(params, y))

    return reconstruct(y_tr), reconstruct(y_te), float(params.code_size)


def _product_quantize(
    xtr: np.ndarray, xte: np.ndarray, M: int, nbits: int, d_out: int | None, xfit: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """PQ reconstructions of both splits (in an OPQ-rotated space of d_out dims if given), the code size; trained
    on xfit (default xtr)."""
    xfit = xtr if xfit is None else xfit
    import faiss

    def new_pq(d: int) -> Any:
        pq = faiss.ProductQuantizer(d, M, nbits)
        # fewer than 39 training points per centroid only makes Faiss print a warning per sub-quantizer
        pq.cp.min_points_per_centroid = 1
        return pq

    if d_out is not None:
        opq = faiss.OPQMatrix(xtr.shape[1], M, d_out)
        inner = new_pq(d_out)  # OPQMatrix otherwise trains an 8-bit quantizer that warns, whatever nbits
        opq.pq = inner
        opq.train(xfit)
        xtr, xte, xfit = opq.apply(xtr), opq.apply(xte), opq.apply(xfit)
    pq = new_pq(xtr.shape[1])
    pq.train(xfit)
    return pq.decode(pq.compute_codes(xtr)), pq.decode(pq.compute_codes(xte)), float(pq.code_size)


def run_grid(
    xtr: np.ndarray,
    xte: np.ndarray,
    score_fn: ScoreFn,
    experiments: Sequence[str] = PAPER_EXPERIMENTS,
    *,
    layer: str = "fc7",
    reps: int = 10,
    levels: Sequence[int] = range(2, 31),
    pca_projection: str = "centred",
    cache_dir: Path | None = None,
    progress: bool = True,
    dr_sizes: Sequence[int] | None = None,
    fc_dims: Sequence[int] | None = None,
    fc_levels: Sequence[int] | None = None,
    qb_bits: Sequence[int] | None = None,
    ranges: Mapping[str, str] = ROBUST_RANGES,
    pq_bytes: Sequence[int] | None = None,
    pq_nbits: int = 8,
    cache_tag: str = "",
    fit_on: np.ndarray | None = None,
) -> GridResult:
    """Score the identity and every point of `experiments` (module doc) and return them all.

    xtr (m_tr, n), xte (m_te, n) float features: training / test vectors for classification, database /
    query descriptors for retrieval; every transform is fitted on xtr. score_fn(xtr', xte') gets the
    stressed, L2-normalised float32 features and returns {metric name: score in 0-100}, the same names at
    every point. layer: a label stored in the result.
    Grid options: reps (dr1 repetitions); levels (h of q1 / q2); dr_sizes (dr1 / dr2 sizes, default
    dr1_sizes(n); PCA sizes beyond min(n, m_tr) are dropped); fc_dims, fc_levels (default fc_grid(n));
    qb_bits (k of qb64 and qb32, default all, those above 32 skipped for qb32); ranges (name -> codec
    range of the "-name" experiments); pq_bytes (M of pq / opq, each dividing n; default PQ_DEFAULT_BYTES
    that divide n; opq keeps those with min(n, 4M) <= OPQ_MAX_OUT); pq_nbits (bits per PQ code, the
    training set needs >= 2**pq_nbits vectors). At 8 bits M is the bytes per vector: the FC points of
    equal size are those with ceil(p ceil(log2 h) / 8) = M, e.g. 256 bytes = 409 dims at h = 17..32 or
    2048 dims at h = 2 for n = 4096.
    cache_dir: each point is stored in cache_dir/<experiment>/<key>-<fingerprint>.json as soon as it is
    scored and reused by later runs on the same xtr, xte and cache_tag (name the score function in
    cache_tag when one cache serves several tasks). progress: a tqdm bar on stderr.
    """
    xtr, xte = np.asarray(xtr), np.asarray(xte)
    if xtr.ndim != 2 or xte.ndim != 2 or xtr.shape[1] != xte.shape[1] or not len(xtr) or not len(xte):
        raise ValueError(f"xtr and xte must be non-empty (m, n) arrays, got {xtr.shape} and {xte.shape}")
    if not (np.isfinite(xtr).all() and np.isfinite(xte).all()):
        raise ValueError("stress features contain NaN or inf")
    if pca_projection not in PCA_PROJECTIONS:
        raise ConfigError(f"unknown pca_projection {pca_projection!r}; use centred or uncentred")
    if not isinstance(reps, int) or reps < 1:
        raise ConfigError(f"reps must be a positive integer, not {reps!r}")
    if fit_on is not None and (fit_on.ndim != 2 or fit_on.shape[1] != xtr.shape[1] or not len(fit_on)):
        raise ValueError(f"fit_on must be a non-empty (m, {xtr.shape[1]}) array, got {fit_on.shape}")
    x32tr, x32te = xtr.astype(np.float32), xte.astype(np.float32)
    # transforms are learnt on x32fit: the training split, or another dataset's descriptors (--codec-from)
    x32fit = x32tr if fit_on is None else np.asarray(fit_on, np.float32)
    m_tr, n = x32fit.shape
    names = list(dict.fromkeys(e for e in experiments))
    parsed = {e: _parse_experiment(e, ranges) for e in names}
    sizes = list(dr_sizes) if dr_sizes is not None else dr1_sizes(n)
    default_fc_dims, default_fc_levels = fc_grid(n)
    fc_dims = list(fc_dims) if fc_dims is not None else default_fc_dims
    fc_levels = list(fc_levels) if fc_levels is not None else default_fc_levels
    levels = list(levels)
    for p in sizes + fc_dims:
        if not isinstance(p, (int, np.integer)) or not 1 <= p <= n:
            raise ConfigError(f"stress sizes must be integers in [1, {n}], not {p!r}")
    for h in levels + fc_levels:
        if not isinstance(h, (int, np.integer)) or not 1 <= h <= codec.MAX_LEVELS:
            raise ConfigError(f"stress levels must be integers in [1, {codec.MAX_LEVELS}], not {h!r}")
    pca_max = min(n, m_tr)
    pq_ms = list(pq_bytes) if pq_bytes is not None else [M for M in PQ_DEFAULT_BYTES if n % M == 0]
    if any(e in ("pq", "opq") for e, _ in parsed.values()):
        if m_tr < 1 << pq_nbits:
            raise ConfigError(
                f"PQ with {pq_nbits}-bit codes needs >= {1 << pq_nbits} training vectors; lower pq_nbits"
            )
        bad = [M for M in pq_ms if not (isinstance(M, (int, np.integer)) and 1 <= M <= n and n % M == 0)]
        if bad:
            raise ConfigError(f"PQ sub-quantizer counts {bad} do not divide the {n} dimensions")
    opq_ms = [M for M in pq_ms if min(n, 4 * M) <= OPQ_MAX_OUT]

    # PCA for dr2 / fc, fitted once (all axes) and only if a point needs it
    pca_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def projected() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(training, test, fitting) features projected on the PCA axes learnt on the fitting features."""
        if not pca_cache:
            params = codec.fit(x32fit, codec.CodecConfig(reduction="pca", dims=n, quantizer="none"))
            if pca_projection == "centred":
                pca_cache["y"] = tuple(codec.reduce(params, x) for x in (x32tr, x32te, x32fit))
            else:
                pca_cache["y"] = tuple(x @ params.components.T for x in (x32tr, x32te, x32fit))
        return pca_cache["y"]

    tasks = [_Task("identity", "identity", n, stress=lambda: (x32tr, x32te, 4.0 * n))]
    for name in names:
        base, spec = parsed[name]
        if base == "dr1":
            for p in sizes:
                for r in range(reps):
                    cfg = codec.CodecConfig(reduction="dr1", dims=int(p), quantizer="none", seed=r)

                    def stress(cfg=cfg, p=p):
                        params = codec.fit(x32fit, cfg)
                        return codec.reduce(params, x32tr), codec.reduce(params, x32te), 4.0 * p

                    tasks.append(_Task(name, f"p{p}-r{r}", int(p), rep=r, stress=stress))
        elif base == "dr2":
            for p in (p for p in sizes if p <= pca_max):

                def stress(p=p):
                    ytr, yte, _ = projected()
                    return ytr[:, :p], yte[:, :p], 4.0 * p

                tasks.append(_Task(name, f"p{p}-{pca_projection}", int(p), stress=stress))
        elif base in ("q1", "q2"):
            for h in levels:
                cfg = codec.CodecConfig(reduction="none", quantizer=base, levels=int(h), range=spec)

                def stress(cfg=cfg):
                    return _quantize(x32tr, x32te, cfg, x32fit)

                tasks.append(_Task(name, f"h{h}-{_slug(spec)}", n, levels=int(h), stress=stress))
        elif base in ("qb", "qb64", "qb32"):
            for width in (64, 32) if base == "qb" else (int(base[2:]),):
                ks = list(qb_bits) if qb_bits is not None else range(width + 1)
                for k in (k for k in ks if 0 <= k <= width):

                    def stress(k=k, width=width):
                        return erase_bits(xtr, k, width), erase_bits(xte, k, width), (width - k) / 8 * n

                    tasks.append(_Task(f"qb{width}", f"k{k}", n, removed_bits=int(k), stress=stress))
        elif base == "fc":
            for p in (p for p in fc_dims if p <= pca_max):
                for h in fc_levels:
                    cfg = codec.CodecConfig(reduction="none", quantizer="q2", levels=int(h), range=spec)

                    def stress(p=p, cfg=cfg):
                        ytr, yte, yfit = projected()
                        return _quantize(ytr[:, :p], yte[:, :p], cfg, yfit[:, :p])

                    key = f"p{p}-h{h}-{pca_projection}-{_slug(spec)}"
                    tasks.append(_Task(name, key, int(p), levels=int(h), stress=stress))
        else:  # pq, opq
            for M in pq_ms if base == "pq" else opq_ms:
                d_out = None if base == "pq" else min(n, 4 * M)
                key = f"m{M}-b{pq_nbits}" + (f"-o{d_out}" if d_out else "")

                def stress(M=M, d_out=d_out):
                    return _product_quantize(x32tr, x32te, int(M), pq_nbits, d_out, x32fit)

                tasks.append(_Task(name, key, d_out or n, stress=stress))

    fingerprint = _fingerprint(xtr, xte, cache_tag, None if fit_on is None else x32fit)
    cache = Path(cache_dir) if cache_dir is not None else None
    memo: dict[str, dict[str, float]] = {}
    points: list[Point] = []
    metric_names: list[str] | None = None
    from tqdm import tqdm

    with tqdm(total=len(tasks), desc=f"stress {layer}", disable=not progress, unit="pt") as bar:
        for task in tasks:
            bar.set_postfix_str(f"{task.experiment} {task.key}", refresh=False)
            path = cache / task.experiment / f"{task.key}-{fingerprint[:16]}.json" if cache else None
            point = _read_cached(path, fingerprint) if path else None
            if point is None:
                a, b, nbytes = task.stress()
                a, b = l2_normalize(a), l2_normalize(b)
                digest = _digest(a, b)
                if digest not in memo:
                    memo[digest] = _check_scores(score_fn(a, b), metric_names)
                point = Point(
                    experiment=task.experiment, dims=task.dims, levels=task.levels,
                    removed_bits=task.removed_bits, rep=task.rep, scores=dict(memo[digest]),
                    bytes_per_vector=float(nbytes), compression=1.0 - float(nbytes) / (4.0 * n),
                )  # fmt: skip
                if path:
                    entry = {"version": STRESS_VERSION, "fingerprint": fingerprint, "point": point.to_dict()}
                    _write_json(path, entry)
            if metric_names is None:
                metric_names = list(point.scores)
            points.append(point)
            bar.update()

    settings = {
        "version": STRESS_VERSION, "experiments": names, "reps": reps, "dr1_seeds": list(range(reps)),
        "levels": levels, "dr_sizes": [int(p) for p in sizes], "fc_dims": [int(p) for p in fc_dims],
        "fc_levels": [int(h) for h in fc_levels],
        "qb_bits": list(qb_bits) if qb_bits is not None else "all", "pca_projection": pca_projection,
        "ranges": dict(ranges), "pq_bytes": [int(M) for M in pq_ms], "opq_bytes": [int(M) for M in opq_ms],
        "pq_nbits": pq_nbits, "normalization": "l2 after stressing", "sd": "sample (ddof=1)",
        "m_train": len(xtr), "m_test": len(xte), "m_fit": m_tr,
        "fit_on": "train" if fit_on is None else "other", "cache_tag": cache_tag, "fingerprint": fingerprint,
    }  # fmt: skip
    baseline = dict(points[0].scores)
    return GridResult(layer, n, list(baseline), baseline, points, settings)


def _check_scores(scores: Any, names: list[str] | None) -> dict[str, float]:
    if not isinstance(scores, Mapping) or not scores:
        raise TypeError(f"score_fn must return a non-empty mapping of metric name to score, not {scores!r}")
    out = {str(k): float(v) for k, v in scores.items()}
    if names is not None and list(out) != names:
        raise ValueError(f"score_fn returned metrics {list(out)}, earlier {names}: they must not change")
    return out
