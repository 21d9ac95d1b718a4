"""The paper's stress grid (sections 2.1-2.3 and 3), generic over the task that scores the stressed features.

Every experimental point stresses the training features xtr and the test features xte with a transform T
learned on xtr only, L2-normalises both ("We l2-normalize those feature vectors") and hands them to a
score function (an SVM's mAP for classification, a retrieval mAP per protocol...). Experiments:

  identity   T(x) = x: the baseline.
  dr1        keep p_i random dimensions, p_i = floor(n (21 - i) / 20), i = 1..20 (`dr1_sizes`); each size
             repeated `reps` times, the codec's dr1 reduction seeded with the repetition index 0..reps-1.
  dr2        the same sizes by PCA fitted on xtr (those <= min(n, m_tr); when none is, the same 20 steps of
             min(n, m_tr): plan_grid). pca_projection "centred" projects x - mean (the codec's
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
  fcb, fcbl  FC at byte budgets B (`budget_bytes`): PCA to p = floor(8B / b) dims and Q-2 with h = 2**b levels,
             b = 1..8 (those with p <= min(n, m_fit)): ceil(p b / 8) = B bytes exactly; fcbl with each dimension's
             Lloyd-Max levels (codec levels_kind lloyd) instead of evenly spaced ones.
  alloc, allocl   PCA to every axis PCA can keep, then integer bits per axis by variance summing to 8B (codec
             allocation variance), evenly spaced levels (alloc) or Lloyd-Max ones (allocl); at each budget B
             <= min(n, m_fit) (8 bits at most per axis).
  pq, opq    Faiss product quantization of x with M sub-quantizers of 2**nbits centroids (M bytes at
             nbits = 8), trained on xtr; opq first learns an OPQ rotation to M min(4, n // M, m_fit // M)
             dimensions (`opq_out`; Faiss' OPQ{M}_{4M} when 4M <= n, m_fit) and scores the rotated
             reconstructions (inner products as in that space).
             Compared at equal bytes: by default M is taken from the code sizes of the Q-2 and FC points
             (`pq_budgets`, one per octave up to PQ_MAX_BYTES); an M that does not divide n cuts x into M
             sub-vectors of floor(n / M) or ceil(n / M) dimensions (zero-padded to Faiss' equal sub-vectors:
             padding adds nothing to any distance), so every byte is a code of real dimensions.

run_grid = plan_grid (the points the shape of the data allows: PCA keeps at most min(n, m_tr) dimensions, PQ
needs 2**nbits training vectors...; what is left out is named with its reason, never dropped silently) + run_plan
(stress and score each planned point).

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
import sys
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
# PQ is planned at the code sizes of the Q-2 and FC points (bytes = M nbits / 8), one size per octave, up to
# PQ_MAX_BYTES: Faiss trains M k-means of 256 centroids, each costing about the same whatever n / M is (about 1 s
# for 5000 training vectors on 2 shared cores: M = 256 took 4.3 min, M = 160 of 1280 dims 2.9 min), so the Q-2
# points of 4096-D descriptors (512 to 2560 B) would take up to 45 min each. OPQ alternates 50 such trainings
# (4 k-means iterations each) with SVDs: its output is capped lower. PQ_DEFAULT_BYTES: sizes (at 8 bits) of grids
# planned before PQ followed the Q-2 / FC sizes, kept for `pq_bytes=PQ_DEFAULT_BYTES`.
PQ_DEFAULT_BYTES = (8, 16, 32, 64, 128, 256)
PQ_MAX_BYTES = 512
OPQ_MAX_OUT = 512
# Byte budgets always compared when an experiment planned at budgets (fcb, fcbl, alloc, allocl) is asked: 16 and 32 B,
# and the paper's 98.4% point, 1/64 of the float32 vector (n / 16 bytes: 256 B for 4096 dims), `budget_anchors`.
BUDGET_ANCHORS = (16, 32)
BUDGET_EXPERIMENTS = ("fcb", "fcbl", "alloc", "allocl")
MAX_FCB_BITS = 8
_BASES = ("dr1", "dr2", "q1", "q2", "qb", "qb64", "qb32", "fc", "pq", "opq") + BUDGET_EXPERIMENTS
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


# A score function may also score variants of its own computation beside its metrics, under the name
# "<variant>:<metric>" (`variant_score`): `retr eval --expand` adds "aqe:map", "dba:map"... (query expansion ranking
# the same stressed vectors). They are kept in every Point's scores and averaged like the others, but are not
# metric_names: each is a score *of* a metric, which eval/report.py shows beside it.
VARIANT_SEP = ":"


def variant_score(variant: str, metric: str) -> str:
    """The score name of ``metric`` under a variant: ("aqe", "map") -> "aqe:map"."""
    return f"{variant}{VARIANT_SEP}{metric}"


def split_score(name: str) -> tuple[str | None, str]:
    """(variant, metric) of a score name: "aqe:map" -> ("aqe", "map"); a metric itself -> (None, "map")."""
    variant, sep, metric = name.partition(VARIANT_SEP)
    return (variant, metric) if sep else (None, name)


@dataclass
class GridResult:
    """All points of one grid: layer name, n input dimensions, metric names (score_fn's keys, less its variant
    scores "<variant>:<metric>", which only the points carry), the baseline (identity) scores of those metrics, the
    points (identity included, in computation order), the settings that made them and the experiments asked for
    that have no point, with the reason (skipped: {experiment: why}).
    """

    layer: str
    n: int
    metric_names: list[str]
    baseline: dict[str, float]
    points: list[Point]
    settings: dict = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def experiments(self) -> list[str]:
        """Experiment names in the order they were run, identity first."""
        return list(dict.fromkeys(p.experiment for p in self.points))

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": STRESS_VERSION, "layer": self.layer, "n": self.n,
            "metric_names": list(self.metric_names), "baseline": dict(self.baseline),
            "points": [p.to_dict() for p in self.points], "settings": self.settings, "skipped": dict(self.skipped),
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GridResult:
        names = {"version", "layer", "n", "metric_names", "baseline", "points", "settings"}
        # "skipped" came later within version 1: a result without it recorded no skipped experiment
        if not isinstance(d, Mapping) or set(d) - {"skipped"} != names:
            raise ConfigError(f"a stress result must have exactly the fields {', '.join(sorted(names | {'skipped'}))}")
        if d["version"] != STRESS_VERSION:
            raise ConfigError(f"stress result format {d['version']} is not {STRESS_VERSION}; rerun the grid")
        return cls(
            layer=d["layer"], n=int(d["n"]), metric_names=list(d["metric_names"]),
            baseline={str(k): float(v) for k, v in d["baseline"].items()},
            points=[Point.from_dict(p) for p in d["points"]], settings=dict(d["settings"]),
            skipped={str(k): str(v) for k, v in d.get("skipped", {}).items()},
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


@dataclass(frozen=True)
class PlannedPoint:
    """One point a plan will score: the Point it becomes and what to compute for it.

    experiment: the name its Point carries ("dr1", "qb64", "q2-sigma", ...); key: its cache file name within the
    experiment; kind: the transform, "identity" or an experiment's family ("dr1", "dr2", "q1", "q2", "qb64", "qb32",
    "fc", "pq", "opq"); dims, levels, removed_bits, rep: as Point; range: the codec range of q1 / q2 / fc;
    subquantizers: M of pq / opq; budget: B of fcb, fcbl, alloc, allocl (bytes per vector).
    """

    experiment: str
    key: str
    kind: str
    dims: int
    levels: int | None = None
    removed_bits: int | None = None
    rep: int | None = None
    range: str | None = None
    subquantizers: int | None = None
    budget: int | None = None


@dataclass
class GridPlan:
    """Which points a grid scores, decided from the shape of the data alone (`plan_grid`), before any is computed.

    n: input dimensions; m_fit: vectors the transforms are learnt on, so PCA keeps at most pca_max = min(n, m_fit)
    dimensions. experiments: as asked, repeats removed. Sizes and levels of each family: dr1_sizes (largest
    first), dr2_sizes (those PCA can keep), levels (h of q1 / q2), qb_bits (k of qb64 / qb32, None: all), fc_dims x
    fc_levels, pq_bytes / opq_bytes (M of pq / opq) at pq_nbits bits per code, budget_bytes (B of fcb, fcbl,
    alloc, allocl; those each can reach are planned: `budget_points`). skipped: experiment asked for ->
    why it has no point; adapted: experiment -> how its sizes were fitted to the data. points() lists them all.
    """

    n: int
    m_fit: int
    experiments: tuple[str, ...]
    reps: int
    pca_projection: str
    ranges: dict[str, str]
    dr1_sizes: tuple[int, ...]
    dr2_sizes: tuple[int, ...]
    levels: tuple[int, ...]
    qb_bits: tuple[int, ...] | None
    fc_dims: tuple[int, ...]
    fc_levels: tuple[int, ...]
    pq_bytes: tuple[int, ...]
    opq_bytes: tuple[int, ...]
    pq_nbits: int
    skipped: dict[str, str] = field(default_factory=dict)
    adapted: dict[str, str] = field(default_factory=dict)
    budget_bytes: tuple[int, ...] = ()

    @property
    def pca_max(self) -> int:
        return min(self.n, self.m_fit)

    def points(self) -> list[PlannedPoint]:
        """Identity first, then each experiment's points in the order they are scored (neighbours one after the
        other: a warm-started score function sees similar features in turn)."""
        n, proj = self.n, self.pca_projection
        out = [PlannedPoint("identity", "identity", "identity", n)]
        for name in self.experiments:
            base, spec = _parse_experiment(name, self.ranges)
            if base == "dr1":
                out += [
                    PlannedPoint(name, f"p{p}-r{r}", "dr1", p, rep=r) for p in self.dr1_sizes for r in range(self.reps)
                ]
            elif base == "dr2":
                out += [PlannedPoint(name, f"p{p}-{proj}", "dr2", p) for p in self.dr2_sizes]
            elif base in ("q1", "q2"):
                out += [
                    PlannedPoint(name, f"h{h}-{_slug(spec)}", base, n, levels=h, range=spec) for h in self.levels
                ]
            elif base in ("qb", "qb64", "qb32"):
                for width in (64, 32) if base == "qb" else (int(base[2:]),):
                    out += [
                        PlannedPoint(f"qb{width}", f"k{k}", f"qb{width}", n, removed_bits=k)
                        for k in _bits(self.qb_bits, width)
                    ]
            elif base == "fc":
                out += [
                    PlannedPoint(name, f"p{p}-h{h}-{proj}-{_slug(spec)}", "fc", p, levels=h, range=spec)
                    for p in self.fc_dims
                    for h in self.fc_levels
                ]
            elif base in BUDGET_EXPERIMENTS:
                out += self.budget_points(name)
            else:  # pq, opq
                for M in self.pq_bytes if base == "pq" else self.opq_bytes:
                    d_out = None if base == "pq" else opq_out(n, M, self.m_fit)
                    key = f"m{M}-b{self.pq_nbits}" + (f"-o{d_out}" if d_out else "")
                    out.append(PlannedPoint(name, key, base, d_out or n, subquantizers=M))
        return out

    def budget_points(self, name: str) -> list[PlannedPoint]:
        """The points of a budget experiment (module doc): fcb / fcbl at each budget B, one per bit width b with
        p = floor(8B / b) <= pca_max; alloc / allocl at each B <= pca_max, on pca_max axes."""
        proj, out = self.pca_projection, []
        for B in self.budget_bytes:
            if name in ("fcb", "fcbl"):
                for b in range(1, MAX_FCB_BITS + 1):
                    p = 8 * B // b
                    if 1 <= p <= self.pca_max:
                        out.append(PlannedPoint(name, f"b{B}-p{p}-h{1 << b}-{proj}", name, p, levels=1 << b, budget=B))
            elif B <= self.pca_max:
                out.append(PlannedPoint(name, f"b{B}-p{self.pca_max}-{proj}", name, self.pca_max, budget=B))
        return out

    def settings(self) -> dict[str, Any]:
        """The options of the grid, as GridResult.settings records them."""
        return {
            "version": STRESS_VERSION, "experiments": list(self.experiments), "reps": self.reps,
            "dr1_seeds": list(range(self.reps)), "levels": list(self.levels), "dr_sizes": list(self.dr1_sizes),
            "dr2_sizes": list(self.dr2_sizes), "fc_dims": list(self.fc_dims), "fc_levels": list(self.fc_levels),
            "qb_bits": list(self.qb_bits) if self.qb_bits is not None else "all",
            "pca_projection": self.pca_projection, "ranges": dict(self.ranges), "pq_bytes": list(self.pq_bytes),
            "opq_bytes": list(self.opq_bytes), "pq_nbits": self.pq_nbits, "adapted": dict(self.adapted),
        } | ({"budget_bytes": list(self.budget_bytes)} if self.budget_bytes else {})  # fmt: skip


def _bits(qb_bits: Sequence[int] | None, width: int) -> list[int]:
    """The erased-bit counts k of a Q-B experiment on width-bit floats: all of 0..width, or those asked for."""
    return list(range(width + 1)) if qb_bits is None else [k for k in qb_bits if 0 <= k <= width]


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

    n = xtr.shape[1]
    if d_out is None and n % M:
        # M sub-vectors of floor(n / M) or ceil(n / M) dims, each zero-padded to ceil(n / M): Faiss' PQ on the
        # padded vectors is PQ on the uneven sub-vectors (a zero column adds nothing to any distance)
        dsub = -(-n // M)
        cols = np.concatenate([i * dsub + np.arange(n // M + (i < n % M)) for i in range(M)])
        pad = [np.zeros((len(x), M * dsub), np.float32) for x in (xtr, xte, xfit)]
        for z, x in zip(pad, (xtr, xte, xfit)):
            z[:, cols] = x
        rtr, rte, _ = _product_quantize(*pad[:2], M, nbits, None, pad[2])
        return rtr[:, cols], rte[:, cols], float(-(-M * nbits // 8))

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


def _ints(values: Sequence[int], what: str, lo: int, hi: int) -> tuple[int, ...]:
    """values as ints, repeats removed (the first kept); a ConfigError naming `what` for one outside [lo, hi]."""
    for v in values:
        if not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
            raise ConfigError(f"stress {what} must be integers in [{lo}, {hi}], not {v!r}")
    return tuple(dict.fromkeys(int(v) for v in values))


def _steps(sizes: Sequence[int]) -> tuple[int, ...]:
    """A default grid of sizes without repeats or zeros (those of a small n: dr1_sizes(16) ends 3, 2, 1, 0)."""
    return tuple(dict.fromkeys(max(1, int(p)) for p in sizes))


def _span(values: Sequence[int]) -> str:
    """Sizes in a few words: "1, 2, 3" or "60, 57, ..., 3"."""
    values = list(values)
    if len(values) <= 4:
        return ", ".join(str(v) for v in values)
    return f"{values[0]}, {values[1]}, ..., {values[-1]}"


def opq_out(n: int, M: int, m_fit: int | None = None) -> int:
    """OPQ's output dimensions for M <= n sub-quantizers: M min(4, n // M, m_fit // M), a multiple of M (Faiss'
    OPQ{M}_{4M} when 4M <= n, m_fit; min(n, 4M) when M divides n). At most m_fit: Faiss' OPQ starts from a PCA to
    that many dimensions, which crashes (segmentation fault) with fewer training vectors. 0 when M > m_fit."""
    return M * min(4, n // M, (m_fit if m_fit is not None else n) // M)


def pq_budgets(
    n: int, levels: Sequence[int], fc_dims: Sequence[int], fc_levels: Sequence[int]
) -> dict[int, list[str]]:
    """Code sizes in bytes of the Q-2 points (n dims x levels) and the FC points (fc_dims x fc_levels), bits
    packing: size -> the points of that size ("Q-2 h=3", "FC p=409 h=4"), by increasing size; h = 1 (0 bytes) and
    Q-2 first. The sizes at which PQ / OPQ are compared with them."""
    out: dict[int, list[str]] = {}
    for p, hs, name in [(n, levels, "Q-2")] + [(p, fc_levels, "FC") for p in fc_dims]:
        for h in hs:
            size = codec.code_size_for(codec.CodecConfig(reduction="none", levels=h), p)
            if size > 0:
                out.setdefault(size, []).append(f"{name} h={h}" if name == "Q-2" else f"FC p={p} h={h}")
    return dict(sorted(out.items()))


def budget_anchors(n: int) -> tuple[int, ...]:
    """The byte budgets always compared by the budget experiments: BUDGET_ANCHORS and the paper's 98.4% point,
    round(n / 16) bytes (1/64 of the float32 vector: 4096 dims, 409 x 5 bits, 256 B)."""
    return tuple(sorted({*BUDGET_ANCHORS, max(1, round(n / 16))}))


def octave_sizes(budgets: Mapping[int, list[str]], anchors: Sequence[int] = ()) -> tuple[list[int], list[int]]:
    """(chosen, others) of the sizes `budgets` (size -> the Q-2 / FC points of that size): every anchor, and one
    size per octave [2**k / sqrt 2, 2**k sqrt 2) not holding an anchor: a Q-2 size if the octave has one (the paper's
    main comparison), else the one nearest 2**k (the smaller on a tie)."""
    octaves: dict[int, list[int]] = {}
    for b in budgets:
        octaves.setdefault(round(math.log2(b)), []).append(b)  # round(log2 b) = k: 2**k / sqrt 2 <= b < 2**k sqrt 2
    chosen, others = set(anchors), []
    for k, sizes in sorted(octaves.items()):
        if any(round(math.log2(a)) == k for a in anchors):
            others += [b for b in sizes if b not in chosen]
            continue
        q2 = [b for b in sizes if any(w.startswith("Q-2") for w in budgets[b])]
        pick = min(q2 or sizes, key=lambda b: (abs(math.log2(b) - k), b))
        chosen.add(pick)
        others += [b for b in sizes if b != pick]
    return sorted(chosen), sorted(others)


def _pq_sizes(budgets: Mapping[int, list[str]], n: int, nbits: int,
              anchors: Sequence[int] = ()) -> tuple[tuple[int, ...], str | None]:
    """(M, note): the sub-quantizer counts of the byte sizes PQ is planned at, and what it leaves out.

    A size B can be matched by M = 8 B / nbits sub-quantizers when that is a whole number <= n. Of those up to
    PQ_MAX_BYTES, `octave_sizes` with the anchors (the budget experiments' sizes, when they are asked). The note
    names every size left without a PQ point, with why (None when there is none)."""
    why: dict[str, list[int]] = {}
    fits: list[int] = []
    for b in sorted({*budgets, *anchors}):
        if (8 * b) % nbits or 8 * b // nbits > n:
            why.setdefault(f"not {nbits}-bit codes of at most {n} sub-quantizers", []).append(b)
        elif b > PQ_MAX_BYTES:
            why.setdefault(f"above PQ_MAX_BYTES = {PQ_MAX_BYTES}: a PQ point trains M k-means of "
                           f"{1 << nbits} centroids, about a second each", []).append(b)
        else:
            fits.append(b)
    chosen, others = octave_sizes({b: budgets.get(b, []) for b in fits if b in budgets},
                                  [a for a in anchors if a in fits])
    if others:
        why.setdefault("another size of the same octave was taken", []).extend(others)
    Ms = tuple(8 * b // nbits for b in chosen)
    if not why:
        return Ms, None
    left = "; ".join(f"{', '.join(map(str, sorted(bs)))} B ({w})" for w, bs in why.items())
    what = "Q-2 / FC points, one per octave" + (f", and {', '.join(map(str, anchors))} B" if anchors else "")
    return Ms, (f"at the code sizes of {what}: {', '.join(map(str, chosen))} B "
                f"(M = {', '.join(map(str, Ms))} at {nbits} bits); Q-2 / FC sizes without a PQ point: {left}")


def _pca_sizes(
    asked: Sequence[int] | None, paper: Callable[[int], Sequence[int]], n: int, m_fit: int
) -> tuple[tuple[int, ...], str | None, str | None]:
    """(sizes, adapted note, skip reason) of a PCA experiment (dr2, fc): the sizes asked (default: paper(n)) that
    PCA can keep, <= min(n, m_fit); when none of the default sizes is in reach, the same steps of min(n, m_fit)."""
    pca_max = min(n, m_fit)
    sizes = _steps(paper(n)) if asked is None else _ints(asked, "sizes", 1, n)
    if not sizes:
        return (), None, "no sizes given"
    why = f"PCA keeps at most {pca_max} dimensions ({m_fit} training vectors, {n} input dimensions)"
    kept = tuple(p for p in sizes if p <= pca_max)
    if kept:
        left = [p for p in sizes if p > pca_max]
        return kept, (f"sizes {_span(left)} left out: {why}" if left else None), None
    if asked is not None:
        return (), None, f"{why}, fewer than every size asked ({_span(sizes)})"
    steps = _steps(paper(pca_max))
    note = f"{why}, fewer than the paper's sizes ({_span(sizes)}): the same steps of {pca_max} instead ({_span(steps)})"
    return steps, note, None


def plan_grid(
    n: int,
    m_fit: int,
    experiments: Sequence[str] = PAPER_EXPERIMENTS,
    *,
    reps: int = 10,
    levels: Sequence[int] = range(2, 31),
    pca_projection: str = "centred",
    dr_sizes: Sequence[int] | None = None,
    fc_dims: Sequence[int] | None = None,
    fc_levels: Sequence[int] | None = None,
    qb_bits: Sequence[int] | None = None,
    ranges: Mapping[str, str] = ROBUST_RANGES,
    pq_bytes: Sequence[int] | None = None,
    pq_nbits: int = 8,
) -> GridPlan:
    """The points of `experiments` (module doc) on n-dimensional features whose transforms are learnt on m_fit
    vectors; the options as `run_grid`'s. Options of the experiments not asked for are not looked at, except
    that pq / opq without pq_bytes take their sizes from the Q-2 and FC options (levels, fc_dims, fc_levels).

    What the data cannot support is left out, with its reason in the plan (skipped: the experiment has no point;
    adapted: some of its sizes changed): PCA sizes (dr2, fc) above min(n, m_fit) are dropped, and when none of
    the default sizes is in reach the same steps are taken of min(n, m_fit) instead (20 for dr2, 9 for fc); pq /
    opq need >= 2**pq_nbits training vectors, are planned at the Q-2 / FC code sizes (`_pq_sizes`, the sizes
    without a PQ point named with why); opq keeps the M with 0 < opq_out(n, M, m_fit) <= OPQ_MAX_OUT. Mistakes in the
    options themselves (an unknown experiment, a size outside [1, n], a PQ size asked for that does not divide n)
    are ConfigErrors. Repeated sizes or levels are planned once.
    """
    if pca_projection not in PCA_PROJECTIONS:
        raise ConfigError(f"unknown pca_projection {pca_projection!r}; use centred or uncentred")
    if not isinstance(reps, int) or reps < 1:
        raise ConfigError(f"reps must be a positive integer, not {reps!r}")
    names = tuple(dict.fromkeys(experiments))
    family = {e: _parse_experiment(e, ranges)[0] for e in names}
    asked = set(family.values())
    skipped: dict[str, str] = {}
    adapted: dict[str, str] = {}

    def record(families: tuple[str, ...], note: str | None, skip: str | None) -> None:
        for e in (e for e in names if family[e] in families):
            if skip:
                skipped[e] = skip
            elif note:
                adapted[e] = note

    dr1 = dr2 = q_levels = fcd = fcl = pq_ms = opq_ms = ()
    if asked & {"dr1", "dr2"}:
        dr1 = _steps(dr1_sizes(n)) if dr_sizes is None else _ints(dr_sizes, "sizes", 1, n)
        record(("dr1",), None, None if dr1 else "no sizes given")
    if "dr2" in asked:
        dr2, note, skip = _pca_sizes(None if dr_sizes is None else dr1, dr1_sizes, n, m_fit)
        record(("dr2",), note, skip)
    if asked & {"q1", "q2"}:
        q_levels = _ints(levels, "levels", 1, codec.MAX_LEVELS)
        record(("q1", "q2"), None, None if q_levels else "no levels given")
    bits = None if qb_bits is None else tuple(dict.fromkeys(int(k) for k in qb_bits))
    for e in (e for e in names if family[e] in ("qb", "qb64", "qb32")):
        for width in (64, 32) if e == "qb" else (int(e[2:]),):
            if not _bits(bits, width):
                skipped[f"qb{width}"] = f"no number of removed bits in [0, {width}] among those asked ({_span(bits)})"
    if "fc" in asked:
        fcl = _ints(fc_levels if fc_levels is not None else fc_grid(n)[1], "levels", 1, codec.MAX_LEVELS)
        fcd, note, skip = _pca_sizes(fc_dims, lambda k: fc_grid(k)[0], n, m_fit)
        record(("fc",), note, skip or (None if fcl else "no levels given"))
    sizes: dict[int, list[str]] = {}
    anchors = budget_anchors(n) if asked & set(BUDGET_EXPERIMENTS) else ()
    if (asked & {"pq", "opq"} and pq_bytes is None) or anchors:
        # the code sizes of the Q-2 and FC points this plan's options give, whether or not they are run
        q2_levels = q_levels if asked & {"q1", "q2"} else _ints(levels, "levels", 1, codec.MAX_LEVELS)
        fc_sizes = (fcd, fcl) if "fc" in asked else (
            _pca_sizes(fc_dims, lambda k: fc_grid(k)[0], n, m_fit)[0],
            _ints(fc_levels if fc_levels is not None else fc_grid(n)[1], "levels", 1, codec.MAX_LEVELS))
        sizes = pq_budgets(n, q2_levels, *fc_sizes)
    budget_b: tuple[int, ...] = ()
    if anchors:
        budget_b = tuple(octave_sizes(sizes, anchors)[0])
        pca_max = min(n, m_fit)
        out_of_reach = [B for B in budget_b if B > pca_max]
        if len(out_of_reach) == len(budget_b):
            record(BUDGET_EXPERIMENTS, None, f"PCA keeps {pca_max} axes: no budget of {_span(budget_b)} B fits")
        elif out_of_reach:  # fcb needs p = 8B / b <= pca_max at b <= 8 bits, alloc 8 bits on at most pca_max axes
            record(BUDGET_EXPERIMENTS, f"budgets {', '.join(map(str, out_of_reach))} B left out: {MAX_FCB_BITS} bits "
                                       f"on each of the {pca_max} axes PCA can keep hold {pca_max} B", None)
    if asked & {"pq", "opq"}:
        pq_note = None
        if not isinstance(pq_nbits, int) or not 1 <= pq_nbits <= 16:
            raise ConfigError(f"PQ codes must have 1 to 16 bits, not {pq_nbits!r}")
        if pq_bytes is None:
            pq_ms, pq_note = _pq_sizes(sizes, n, pq_nbits, anchors)
        else:
            bad = [M for M in pq_bytes if not (isinstance(M, (int, np.integer)) and 1 <= M <= n and n % M == 0)]
            if bad:
                raise ConfigError(f"PQ sub-quantizer counts {bad} do not divide the {n} dimensions")
            pq_ms = tuple(dict.fromkeys(int(M) for M in pq_bytes))
        opq_ms = tuple(M for M in pq_ms if 0 < opq_out(n, M, m_fit) <= OPQ_MAX_OUT)
        cap = f"OPQ's output M min(4, n // M) is capped at {OPQ_MAX_OUT} dimensions" + (
            f" (and at {m_fit}, the training vectors its initial PCA needs)" if m_fit < OPQ_MAX_OUT else "")
        if m_fit < 1 << pq_nbits:
            pq_ms = opq_ms = ()
            record(("pq", "opq"), None, f"{pq_nbits}-bit codes train {1 << pq_nbits} centroids per sub-quantizer, "
                                        f"from >= {1 << pq_nbits} training vectors; there are {m_fit}")
        elif not pq_ms:
            record(("pq", "opq"), None, f"no Q-2 or FC code size up to {PQ_MAX_BYTES} B is a whole number of "
                                        f"{pq_nbits}-bit codes of at most {n} sub-quantizers")
        else:
            record(("pq",), pq_note, None)
            left = [M for M in pq_ms if M not in opq_ms]
            if not opq_ms:
                record(("opq",), None, f"every M ({_span(pq_ms)}) makes {cap}")
            elif left:
                record(("opq",), f"M = {', '.join(map(str, left))} left out: {cap}", None)
    return GridPlan(
        n=n, m_fit=m_fit, experiments=names, reps=reps, pca_projection=pca_projection, ranges=dict(ranges),
        dr1_sizes=dr1, dr2_sizes=dr2, levels=q_levels, qb_bits=bits, fc_dims=fcd, fc_levels=fcl, pq_bytes=pq_ms,
        opq_bytes=opq_ms, pq_nbits=pq_nbits, skipped=skipped, adapted=adapted, budget_bytes=budget_b,
    )  # fmt: skip


class _Stressor:
    """The stressed (training, test) features of planned points and their bytes per vector.

    xtr, xte as given (Q-B erases bits of their own dtype's float64 values); every other transform works on float32
    copies and is learnt on x32fit. The PCA of dr2 / fc is fitted once (all axes), when a point first needs it."""

    def __init__(self, xtr: np.ndarray, xte: np.ndarray, x32fit: np.ndarray | None, plan: GridPlan):
        self.xtr, self.xte = xtr, xte
        self.x32tr, self.x32te = xtr.astype(np.float32), xte.astype(np.float32)
        self.x32fit = self.x32tr if x32fit is None else x32fit
        self.plan = plan
        self._pca: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def projected(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(training, test, fitting) features projected on the PCA axes learnt on the fitting features."""
        if self._pca is None:
            n = self.plan.n
            params = codec.fit(self.x32fit, codec.CodecConfig(reduction="pca", dims=n, quantizer="none"))
            xs = (self.x32tr, self.x32te, self.x32fit)
            if self.plan.pca_projection == "centred":
                self._pca = tuple(codec.reduce(params, x) for x in xs)
            else:
                self._pca = tuple(x @ params.components.T for x in xs)
        return self._pca

    def __call__(self, pt: PlannedPoint) -> tuple[np.ndarray, np.ndarray, float]:
        n, p, kind = self.plan.n, pt.dims, pt.kind
        x32tr, x32te, x32fit = self.x32tr, self.x32te, self.x32fit
        if kind == "identity":
            return x32tr, x32te, 4.0 * n
        if kind == "dr1":
            params = codec.fit(x32fit, codec.CodecConfig(reduction="dr1", dims=p, quantizer="none", seed=pt.rep))
            return codec.reduce(params, x32tr), codec.reduce(params, x32te), 4.0 * p
        if kind == "dr2":
            ytr, yte, _ = self.projected()
            return ytr[:, :p], yte[:, :p], 4.0 * p
        if kind in ("q1", "q2"):
            cfg = codec.CodecConfig(reduction="none", quantizer=kind, levels=pt.levels, range=pt.range)
            return _quantize(x32tr, x32te, cfg, x32fit)
        if kind in ("qb64", "qb32"):
            width, k = int(kind[2:]), pt.removed_bits
            return erase_bits(self.xtr, k, width), erase_bits(self.xte, k, width), (width - k) / 8 * n
        if kind == "fc":
            ytr, yte, yfit = self.projected()
            cfg = codec.CodecConfig(reduction="none", quantizer="q2", levels=pt.levels, range=pt.range)
            return _quantize(ytr[:, :p], yte[:, :p], cfg, yfit[:, :p])
        if kind in BUDGET_EXPERIMENTS:
            ytr, yte, yfit = (y[:, :p] for y in self.projected())
            lloyd = "lloyd" if kind in ("fcbl", "allocl") else "uniform"
            if kind in ("fcb", "fcbl"):
                cfg = codec.CodecConfig(reduction="none", quantizer="q2", levels=pt.levels, levels_kind=lloyd)
            else:
                cfg = codec.CodecConfig(reduction="none", quantizer="q2", allocation="variance", budget=pt.budget,
                                        levels_kind=lloyd)
            return _quantize(ytr, yte, cfg, yfit)
        d_out = None if kind == "pq" else p
        return _product_quantize(x32tr, x32te, pt.subquantizers, self.plan.pq_nbits, d_out, x32fit)


def run_plan(
    plan: GridPlan,
    xtr: np.ndarray,
    xte: np.ndarray,
    score_fn: ScoreFn,
    *,
    layer: str = "fc7",
    cache_dir: Path | None = None,
    progress: bool = True,
    cache_tag: str = "",
    fit_on: np.ndarray | None = None,
) -> GridResult:
    """Score every point of `plan` (identity first) on xtr (m_tr, n), xte (m_te, n), transforms learnt on fit_on
    (default xtr), as `run_grid`; the plan's skipped experiments go into the result with their reasons, and, with
    progress, to stderr with the grid's tqdm bar."""
    xtr, xte = np.asarray(xtr), np.asarray(xte)
    if xtr.ndim != 2 or xte.ndim != 2 or xtr.shape[1] != xte.shape[1] or not len(xtr) or not len(xte):
        raise ValueError(f"xtr and xte must be non-empty (m, n) arrays, got {xtr.shape} and {xte.shape}")
    if not (np.isfinite(xtr).all() and np.isfinite(xte).all()):
        raise ValueError("stress features contain NaN or inf")
    if fit_on is not None and (fit_on.ndim != 2 or fit_on.shape[1] != xtr.shape[1] or not len(fit_on)):
        raise ValueError(f"fit_on must be a non-empty (m, {xtr.shape[1]}) array, got {fit_on.shape}")
    # transforms are learnt on x32fit: the training split, or another dataset's descriptors (--codec-from)
    x32fit = None if fit_on is None else np.asarray(fit_on, np.float32)
    m_fit = len(xtr if fit_on is None else fit_on)
    if (plan.n, plan.m_fit) != (xtr.shape[1], m_fit):
        raise ValueError(f"the plan is for {plan.m_fit} x {plan.n} fitting features, not {m_fit} x {xtr.shape[1]}")
    n = plan.n
    stress = _Stressor(xtr, xte, x32fit, plan)
    planned = plan.points()
    fingerprint = _fingerprint(xtr, xte, cache_tag, x32fit)
    cache = Path(cache_dir) if cache_dir is not None else None
    memo: dict[str, dict[str, float]] = {}
    points: list[Point] = []
    metric_names: list[str] | None = None
    from tqdm import tqdm

    if progress:  # before the bar, which would redraw around each line
        for e, why in plan.adapted.items():
            print(f"stress {layer}: {e}: {why}", file=sys.stderr)
        for e, why in plan.skipped.items():
            print(f"stress {layer}: {e} skipped: {why}", file=sys.stderr)
    with tqdm(total=len(planned), desc=f"stress {layer}", disable=not progress, unit="pt") as bar:
        for task in planned:
            bar.set_postfix_str(f"{task.experiment} {task.key}", refresh=False)
            path = cache / task.experiment / f"{task.key}-{fingerprint[:16]}.json" if cache else None
            point = _read_cached(path, fingerprint) if path else None
            if point is None:
                a, b, nbytes = stress(task)
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
        **plan.settings(), "normalization": "l2 after stressing", "sd": "sample (ddof=1)", "m_train": len(xtr),
        "m_test": len(xte), "m_fit": m_fit, "fit_on": "train" if fit_on is None else "other", "cache_tag": cache_tag,
        "fingerprint": fingerprint,
    }  # fmt: skip
    baseline = {m: v for m, v in points[0].scores.items() if split_score(m)[0] is None}
    return GridResult(layer, n, list(baseline), baseline, points, settings, skipped=dict(plan.skipped))


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
    """Score the identity and every point of `experiments` (module doc) and return them all: `plan_grid` on the
    shape of the data, then `run_plan`.

    xtr (m_tr, n), xte (m_te, n) float features: training / test vectors for classification, database /
    query descriptors for retrieval; every transform is fitted on xtr, or on fit_on (m_fit, n) if given.
    score_fn(xtr', xte') gets the stressed, L2-normalised float32 features and returns {metric name: score in
    0-100}, the same names at every point (names "<variant>:<metric>" are variant scores: `variant_score`).
    layer: a label stored in the result.
    Grid options: reps (dr1 repetitions); levels (h of q1 / q2); dr_sizes (dr1 / dr2 sizes, default
    dr1_sizes(n); PCA sizes beyond min(n, m_fit) are dropped, see plan_grid); fc_dims, fc_levels (default
    fc_grid(n)); qb_bits (k of qb64 and qb32, default all, those above 32 skipped for qb32); ranges (name -> codec
    range of the "-name" experiments); pq_bytes (M of pq / opq, each dividing n; default: the code sizes of the
    Q-2 and FC points, one per octave up to PQ_MAX_BYTES, see plan_grid; opq keeps those with 0 < opq_out(n, M,
    m_fit) <= OPQ_MAX_OUT); pq_nbits (bits per PQ code, the training set needs >= 2**pq_nbits vectors). At 8 bits M is
    the bytes per vector: the FC points of equal size are those with ceil(p ceil(log2 h) / 8) = M, e.g. 256
    bytes = 409 dims at h = 17..32 or 2048 dims at h = 2 for n = 4096. An experiment the data cannot support is
    skipped, with its reason in GridResult.skipped (and on stderr with progress).
    cache_dir: each point is stored in cache_dir/<experiment>/<key>-<fingerprint>.json as soon as it is
    scored and reused by later runs on the same xtr, xte and cache_tag (name the score function in
    cache_tag when one cache serves several tasks). progress: a tqdm bar on stderr.
    """
    xtr = np.asarray(xtr)
    if xtr.ndim != 2:
        raise ValueError(f"xtr and xte must be non-empty (m, n) arrays, got {xtr.shape} and {np.shape(xte)}")
    m_fit = len(xtr) if fit_on is None or np.ndim(fit_on) != 2 else len(fit_on)
    plan = plan_grid(
        xtr.shape[1], m_fit, experiments, reps=reps, levels=levels, pca_projection=pca_projection,
        dr_sizes=dr_sizes, fc_dims=fc_dims, fc_levels=fc_levels, qb_bits=qb_bits, ranges=ranges,
        pq_bytes=pq_bytes, pq_nbits=pq_nbits,
    )  # fmt: skip
    return run_plan(plan, xtr, xte, score_fn, layer=layer, cache_dir=cache_dir, progress=progress,
                    cache_tag=cache_tag, fit_on=fit_on)  # fmt: skip


def _check_scores(scores: Any, names: list[str] | None) -> dict[str, float]:
    if not isinstance(scores, Mapping) or not scores:
        raise TypeError(f"score_fn must return a non-empty mapping of metric name to score, not {scores!r}")
    out = {str(k): float(v) for k, v in scores.items()}
    if names is not None and list(out) != names:
        raise ValueError(f"score_fn returned metrics {list(out)}, earlier {names}: they must not change")
    return out
