"""Stress-grid SVM benchmark: retr's batched torch solver against scikit-learn's LinearSVC on the VOC 2007 grid,
LinearSVC's classes on one core and on two, with the ratio's 95% interval.

    python -m bench.stress                      # 60 grid points, every solver: 29-38 minutes on 2 quiet CPU cores
    python -m bench.stress --single 8           # the one-core reference on 8 of the 60 points: 16-21 minutes
    python -m bench.stress --configs 8 --n-train 800 --n-test 800 --dims 512 --out /tmp/s.json   # a quick look

Data: VOC 2007 is not on this machine, so a seeded synthetic stand-in of its shape (`voc_like`), *not real images*:
5,011 training and 4,952 test vectors of 4,096 dimensions (fc7), 20 classes with VOC-like multi-label structure (one
class in 40% of the images, the others in 2.5-9%, every image at least one label, 1.55 on average, 8% of the positive
labels "difficult" = 0). Features: ReLU(z B + bias + noise) where z (64 latent factors) is the sum of the image's class
prototypes plus noise, B a random 64 x 4096 map: nonnegative, about 66% zeros (fc7 after ReLU: about 70%), classes
separable enough for a meaningful mAP (about 77% at the identity point, near VGG-M fc7 on VOC 2007).

Grid: the paper's, as `retr.eval.stress.run_grid` builds it by default: identity, dr1 (20 sizes x 10 repetitions), dr2
(20 sizes), q1 and q2 (h = 2..30), qb64 (k = 0..64 erased bits), qb32 (k = 0..32) and fc (9 PCA sizes x 29 levels):
638 points, of which those with bit-identical stressed features share one SVM training (run_grid's memo: qb64 with
k <= 29 on float32 features, qb32 with k = 0 and dr1 at the full size are the identity, erasing every bit but the
sign gives all-zero features): 562 trainings at the default size. Training all of them with LinearSVC takes hours,
so this times a seeded subset: the identity plus `--configs` - 1 points drawn uniformly within each experiment (at
least one each, the rest in proportion to the experiment's number of trainings). Their stressed features are made by
`stress.run_plan` on run_grid's own plan (`plan_grid`) kept to the sampled points and their predecessors, one point
at a time (the features of 60 points would not fit in memory together).

Per point, on the same stressed, L2-normalised features, in an order rotated from point to point:
- ``torch``: `train_ovr(solver="torch", tol=--tol)` from w = 0 (all 20 classes in one batched solve, `--threads`);
- ``warm``: the same, started from the torch solution of the point's predecessor in a chained run of the grid
  (`warm_start`): q1 / q2 at h - 1 (h = 2: the identity), qb64 / qb32 at k - 1, fc at (p, h - 1) (h = 2: dr2 at p,
  the same PCA axes). The predecessor's own training is not timed. dr1 (each repetition draws other dimensions) and
  dr2 (each size has other dimensions) have no predecessor and run cold in a chained grid too;
- ``sklearn2`` (the baseline of every ratio): LinearSVC exactly as `train_ovr(solver="sklearn")` trains it (its own
  per-class code, `svm._train_sklearn`, on one class's column: C = 1, squared hinge, L2, dual="auto", tol 1e-5, the
  bias as a regularised constant feature, difficult examples left out of their class), the 20 classes on 2 joblib
  workers: what a user gets from `OneVsRestClassifier(LinearSVC(C=1), n_jobs=-1)` on 2 cores, but with the same
  models as the reference (OneVsRestClassifier cannot leave a class's difficult examples out). `--backend auto`
  times both joblib backends at the identity (threads: LIBLINEAR's solve releases the GIL; loky processes, warmed
  up first as a user's repeated fits would find them) and keeps the faster; the calibration, with the literal
  OneVsRestClassifier's time on the same features for context, is in the JSON;
- ``sklearn1``: `train_ovr(solver="sklearn")`, the classes one after another on one core (LIBLINEAR is
  single-threaded), on `--single` points (default all; the identity and one per experiment first): its scores must
  equal sklearn2's (checked on every such point: max |score difference| and |mAP difference|, in the JSON).
Only training is timed (the stress transforms and the scoring are the same for every solver). mAP: VOC 2007
11-point, 0-100. Other processes' share of the machine's CPU during each training (from /proc/stat, minus this
process and its joblib workers) is recorded; the run is `noisy` when it exceeds 10% over the timed trainings.

Ratios (baseline seconds / torch seconds; torch "chained": warm where the point has a predecessor, else cold):
- per point (min, median, max);
- the ratio of sums over the sampled points;
- the full grid, an extrapolation: per experiment, its number of trainings times the mean of its sampled points,
  summed, for each solver;
each of the last two with a 95% percentile interval from a seeded bootstrap (`--boot` resamples) that redraws the
sampled points with replacement within each experiment (the sample's strata: as many per experiment as drawn).

``--full-grid`` also runs the whole grid as `retr eval voc2007` does, measured: `stress.run_grid` with
`retr.eval.run.classification_scores` (the torch solver at `run.GRID_SVM_TOL`, each training warm-started from the
previous one of the same dimension), every training timed, plus the grid's total wall time (stress transforms and
scoring included). LinearSVC's side of that ratio stays the extrapolation.

Results: a table on stdout and `--out` (default bench/results/stress.json): machine, versions, threads, load,
others' CPU share, every time with its baselines from the same run.

Legend: xtr / xte training / test features (n_tr, n) / (n_te, n), ytr / yte their labels (n, 20) in {1, -1, 0}, n
input dimensions, p kept dimensions, h levels, k erased bits.
"""

from __future__ import annotations

import os
import sys

# libgomp's default busy-waiting makes torch's 2 OpenMP threads spin against anything else on a shared 2-core
# machine; passive waiting is the fair setting (bench/encode.py measured the same). Only effective before torch loads.
_TORCH_PRELOADED = "torch" in sys.modules
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import hashlib  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import joblib  # noqa: E402
import numpy as np  # noqa: E402
import sklearn  # noqa: E402
import torch  # noqa: E402

from bench import common  # noqa: E402
from retr.eval import run as eval_run  # noqa: E402
from retr.eval import stress, svm  # noqa: E402
from retr.eval.datasets import ClassificationDataset  # noqa: E402
from retr.eval.metrics import voc_map  # noqa: E402
from retr.eval.svm import LinearModel, decision, train_ovr  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "stress.json"
EXPERIMENTS = ("dr1", "dr2", "q1", "q2", "qb64", "qb32", "fc")
REPS = 10  # run_grid's default dr1 repetitions
LEVELS = range(2, 31)  # run_grid's default q1 / q2 levels
BACKENDS = ("auto", "threading", "loky")
NOISY = 0.10  # other processes' share of the machine's CPU above which a run is flagged noisy


# ---------------------------------------------------------------------------------------------------------
# Data


def voc_like(
    seed: int,
    n_train: int = 5011,
    n_test: int = 4952,
    d: int = 4096,
    n_cls: int = 20,
    latent: int = 64,
    signal: float = 0.4,
    noise: float = 1.5,
    shift: float = 0.8,
) -> tuple[np.ndarray, ...]:
    """Synthetic VOC 2007-shaped features and labels (module doc): xtr (n_train, d), xte (n_test, d) float32 >= 0,
    ytr, yte (n, n_cls) int8 in {1, -1, 0}. signal: spread of the class prototypes; noise: per-dimension noise;
    shift: mean of the per-dimension negative bias before the ReLU (sets the share of zeros)."""
    rng = np.random.default_rng(seed)
    freq = np.array([0.40] + list(np.linspace(0.09, 0.025, n_cls - 1)))  # "person", then the rarer classes
    proto = rng.normal(size=(n_cls, latent)) * signal
    B = (rng.normal(size=(latent, d)) / np.sqrt(latent)).astype(np.float32)
    bias = (rng.normal(size=d) * 0.3 - shift).astype(np.float32)
    out = []
    for n in (n_train, n_test):
        L = rng.random((n, n_cls)) < freq
        none = ~L.any(1)
        L[none, rng.choice(np.arange(1, n_cls), none.sum())] = True
        z = (L @ proto + rng.normal(size=(n, latent))).astype(np.float32)
        x = np.maximum(z @ B + bias + noise * rng.standard_normal((n, d), dtype=np.float32), 0)
        y = np.where(L, 1, -1).astype(np.int8)
        y[L & (rng.random((n, n_cls)) < 0.08)] = 0
        out += [x, y]
    return tuple(out)


# ---------------------------------------------------------------------------------------------------------
# The grid


@dataclass(frozen=True)
class Key:
    """One grid point: experiment, dims p, levels h, erased bits k, dr1 repetition."""

    experiment: str
    dims: int
    levels: int | None = None
    bits: int | None = None
    rep: int | None = None

    def label(self) -> str:
        e = self.experiment
        if e == "identity":
            return "identity"
        if e == "dr1":
            return f"dr1 p={self.dims} rep {self.rep}"
        if e == "dr2":
            return f"dr2 p={self.dims}"
        if e in ("q1", "q2"):
            return f"{e} h={self.levels}"
        if e in ("qb64", "qb32"):
            return f"{e} k={self.bits}"
        return f"fc p={self.dims} h={self.levels}"

    @classmethod
    def of(cls, p: stress.Point | stress.PlannedPoint) -> Key:
        return cls(p.experiment, p.dims, p.levels, p.removed_bits, p.rep)


def grid_points(n: int) -> dict[str, list[Key]]:
    """Every point of run_grid's default paper grid for n input dimensions, per experiment."""
    sizes = stress.dr1_sizes(n)
    fc_dims, fc_levels = stress.fc_grid(n)
    return {
        "identity": [Key("identity", n)],
        "dr1": [Key("dr1", p, rep=r) for p in sizes for r in range(REPS)],
        "dr2": [Key("dr2", p) for p in sizes],
        "q1": [Key("q1", n, levels=h) for h in LEVELS],
        "q2": [Key("q2", n, levels=h) for h in LEVELS],
        "qb64": [Key("qb64", n, bits=k) for k in range(65)],
        "qb32": [Key("qb32", n, bits=k) for k in range(33)],
        "fc": [Key("fc", p, levels=h) for p in fc_dims for h in fc_levels],
    }


def trainings(
    points: dict[str, list[Key]], xtr: np.ndarray, xte: np.ndarray, rows: int = 256
) -> tuple[dict[str, list[Key]], dict[Key, Key]]:
    """The points that need an SVM training of their own, as run_grid's memo decides (bit-identical stressed and
    normalised features share one), and the others -> the point whose training they share: dr1 at the full size
    keeps every dimension in order, the identity; qb64 / qb32 decided on the first `rows` rows of each split (the
    erasure is per value, so identical rows are identical features; a false match would need every one of those
    values to agree)."""
    n = xtr.shape[1]
    identity = points["identity"][0]
    seen: dict[str, Key] = {}
    alias: dict[Key, Key] = {k: identity for k in points["dr1"] if k.dims == n}

    def digest(a: np.ndarray, b: np.ndarray) -> str:
        h = hashlib.blake2b(digest_size=20)
        for x in (stress.l2_normalize(a), stress.l2_normalize(b)):
            h.update(np.ascontiguousarray(x).data)
        return h.hexdigest()

    seen[digest(xtr[:rows].astype(np.float32), xte[:rows].astype(np.float32))] = identity
    out = {"identity": points["identity"], "dr1": [k for k in points["dr1"] if k.dims < n]}
    out["dr2"], out["q1"], out["q2"], out["fc"] = points["dr2"], points["q1"], points["q2"], points["fc"]
    for e, width in (("qb64", 64), ("qb32", 32)):  # in run_grid's order: qb64 first, so qb32 reuses its points
        out[e] = []
        for k in points[e]:
            h = digest(stress.erase_bits(xtr[:rows], k.bits, width), stress.erase_bits(xte[:rows], k.bits, width))
            if h in seen:
                alias[k] = seen[h]
            else:
                seen[h] = k
                out[e].append(k)
    return {e: out[e] for e in points}, alias


def sample(train: dict[str, list[Key]], n_configs: int, seed: int) -> list[Key]:
    """The identity and n_configs - 1 points: one per experiment that has trainings, the rest in proportion to each
    experiment's number of trainings (largest remainders), drawn uniformly without replacement within each
    experiment, seeded."""
    exps = [e for e in EXPERIMENTS if train[e]]
    if n_configs < 1 + len(exps):
        raise SystemExit(f"--configs must be at least {1 + len(exps)}: the identity and one per experiment")
    rng = np.random.default_rng(seed)
    sizes = np.array([len(train[e]) for e in exps], dtype=np.float64)
    extra = n_configs - 1 - len(exps)
    quota = extra * sizes / sizes.sum()
    count = 1 + np.floor(quota).astype(int)
    for i in np.argsort(-(quota - np.floor(quota)), kind="stable")[: extra - int(np.floor(quota).sum())]:
        count[i] += 1
    picked = [train["identity"][0]]
    for e, c in zip(exps, count):
        idx = np.sort(rng.choice(len(train[e]), size=min(c, len(train[e])), replace=False))
        picked += [train[e][i] for i in idx]
    return picked


def predecessor(k: Key, n: int, alias: dict[Key, Key] | None = None) -> Key | None:
    """The point a chained grid run warm-starts k from (module doc), as the training it shares (`alias`), or None."""
    p = None
    if k.experiment in ("q1", "q2"):
        p = Key(k.experiment, n, levels=k.levels - 1) if k.levels > 2 else Key("identity", n)
    elif k.experiment in ("qb64", "qb32"):
        p = Key(k.experiment, n, bits=k.bits - 1) if k.bits > 0 else Key("identity", n)
    elif k.experiment == "fc":
        p = Key("fc", k.dims, levels=k.levels - 1) if k.levels > 2 else Key("dr2", k.dims)
    return None if p is None else (alias or {}).get(p, p)


@dataclass
class SampledPlan(stress.GridPlan):
    """run_grid's plan (`stress.plan_grid`) kept to the identity and the points in `keep`, in the plan's order."""

    keep: frozenset[Key] = frozenset()

    def points(self) -> list[stress.PlannedPoint]:
        return [t for t in super().points() if t.kind == "identity" or Key.of(t) in self.keep]


def stream(
    xtr: np.ndarray, xte: np.ndarray, keys: set[Key], visit: Callable[[Key, np.ndarray, np.ndarray], None]
) -> float:
    """Call visit(key, xtr', xte') with the stressed, L2-normalised float32 features of the identity and each of
    `keys` (distinct trainings: no two bit-identical), made by `stress.run_plan` on run_grid's own default plan kept
    to them, one at a time in the plan's order (predecessors before their successors), so only one point's features
    are held. Returns the seconds spent outside `visit` (the stress transforms, normalisation and run_plan's memo
    digests).

    run_plan hands its score function the features alone; the key of each call is the plan's next point, checked
    against run_plan's own record of which call each point's scores came from (a mismatch raises)."""
    n = xtr.shape[1]
    base = stress.plan_grid(n, len(xtr), stress.PAPER_EXPERIMENTS)
    plan = SampledPlan(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)}, keep=frozenset(keys))
    order = [Key.of(t) for t in plan.points()]
    missing = keys - set(order)
    if missing:
        raise RuntimeError(f"run_grid's default plan has no point {sorted(k.label() for k in missing)}")
    inside = [0.0]

    calls: list[int] = []

    def score(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
        j = len(calls)
        calls.append(j)
        if j >= len(order) or a.shape[1] != order[j].dims:
            raise RuntimeError(f"run_plan's call {j} has {a.shape[1]} dims, the plan's point {j} is not it")
        t = time.perf_counter()
        visit(order[j], a, b)
        inside[0] += time.perf_counter() - t
        return {"call": float(j)}

    t0 = time.perf_counter()
    res = stress.run_plan(plan, xtr, xte, score, progress=False)
    wall = time.perf_counter() - t0
    bad = [Key.of(p).label() for p in res.points if order[int(p.scores["call"])] != Key.of(p)]
    if bad or len(calls) != len(order):
        raise RuntimeError(f"run_plan scored {len(calls)} of {len(order)} planned points; mismatched: {bad}")
    return wall - inside[0]


# ---------------------------------------------------------------------------------------------------------
# Solvers and timing


def own_cpu_s() -> float:
    """CPU seconds of this process (all its threads) and of its live descendants (joblib's loky workers), from
    /proc; this process's alone where there is none."""
    own = time.process_time()
    procs = common.processes()
    parent = {pid: p.ppid for pid, p in procs.items()}
    mine, todo = set(), [os.getpid()]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p and c not in mine]
        mine.update(kids)
        todo += kids
    return own + sum(procs[c].cpu_s for c in mine)


@dataclass
class Run:
    """One training: wall seconds, CPU seconds of this process and its workers, the share of the machine's CPU time
    that went to other processes meanwhile (None without /proc/stat), and the test mAP (0-100)."""

    seconds: float
    cpu_s: float
    others: float | None
    map: float


def timed(train: Callable[[], LinearModel], xte: np.ndarray, yte: np.ndarray) -> tuple[Run, LinearModel, np.ndarray]:
    """Run `train`, timed; (its Run, the model, its test scores (n_te, 20))."""
    m0, c0, w0 = common.machine_cpu_s(), own_cpu_s(), time.perf_counter()
    model = train()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall, m1, cpu = time.perf_counter() - w0, common.machine_cpu_s(), own_cpu_s() - c0
    others = None if m0 is None or m1 is None else max(0.0, (m1[0] - m0[0]) - cpu) / max(m1[1] - m0[1], 1e-9)
    scores = decision(model, xte)
    return Run(wall, cpu, others, 100 * voc_map(scores, yte)[0]), model, scores


def sklearn_parallel(x: np.ndarray, y: np.ndarray, n_jobs: int = 2, backend: str = "threading") -> LinearModel:
    """`train_ovr(x, y, solver="sklearn")` with its classes on n_jobs joblib workers: the same input check, then
    each class by the reference's own code (`svm._train_sklearn` on that class's column), so the same LinearSVC
    models. backend: "threading" (LIBLINEAR's solve releases the GIL) or "loky" (worker processes, reused across
    calls; x reaches them memory-mapped)."""
    x, y = svm._check(x, y)
    parts = joblib.Parallel(n_jobs=n_jobs, backend=backend)(
        joblib.delayed(svm._train_sklearn)(x, y[:, [c]], 1.0) for c in range(y.shape[1])
    )
    return LinearModel(W=np.vstack([m.W for m in parts]), b=np.concatenate([m.b for m in parts]))


def calibrate(x: np.ndarray, y: np.ndarray, rounds: int = 2) -> dict:
    """Time sklearn_parallel(n_jobs=2) with each joblib backend `rounds` times on (x, y) (the loky workers started
    by an untimed call first), and the literal OneVsRestClassifier(LinearSVC(same settings), n_jobs=2) twice (its
    first call starts its own loky workers); "chosen": the backend with the lower best time."""
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.svm import LinearSVC

    tiny = np.random.default_rng(0).random((8, 4))
    sklearn_parallel(tiny, np.tile([[1], [-1]], (4, 4)), backend="loky")  # start the workers, import sklearn there
    times: dict[str, list[float]] = {"threading": [], "loky": []}
    for _ in range(rounds):
        for b in times:
            t = time.perf_counter()
            sklearn_parallel(x, y, backend=b)
            times[b].append(time.perf_counter() - t)
    ovr_s = []
    for _ in range(2):
        ovr = OneVsRestClassifier(LinearSVC(C=1.0, tol=1e-5, max_iter=100_000, random_state=0), n_jobs=2)
        t = time.perf_counter()
        ovr.fit(x, (y == 1).astype(np.int8))
        ovr_s.append(time.perf_counter() - t)
    return {
        "seconds": times,
        "chosen": min(times, key=lambda b: min(times[b])),
        "one_vs_rest_classifier_s": ovr_s,
        "note": "at the identity, the same features; OneVsRestClassifier(LinearSVC(C=1, tol=1e-5, max_iter=1e5), "
        "n_jobs=2), sklearn's default loky backend: the first call includes starting its workers; it cannot leave "
        "a class's difficult examples out (they count as negatives), so a slightly different problem, its times "
        "for context only",
    }


@dataclass
class Row:
    """One point measured: label, experiment, dims, its runs, the predecessor's label (warm only), the ratios
    (baseline seconds / torch seconds; chained: warm where there is one, else cold), the largest |mAP difference| of
    torch (cold, warm) against sklearn2, and the check that sklearn2 and sklearn1 give the same scores."""

    label: str
    experiment: str
    dims: int
    torch: Run
    sklearn2: Run
    warm: Run | None = None
    warm_from: str | None = None
    sklearn1: Run | None = None
    speedup: float = 0.0
    speedup_chained: float = 0.0
    speedup_single_chained: float | None = None
    max_abs_dmap: float = 0.0
    single_max_abs_dscore: float | None = None
    single_abs_dmap: float | None = None
    load_avg_1min: float = 0.0

    def chained(self) -> Run:
        return self.warm or self.torch


# ---------------------------------------------------------------------------------------------------------
# Ratios and their intervals


def ratios(
    rows: list[Row],
    base: Callable[[Row], Run | None],
    solver: Callable[[Row], Run],
    counts: dict[str, int],
    boot: int,
    seed: int,
) -> dict:
    """Baseline / solver seconds over the rows where the baseline ran: per point (min, median, max), the ratio of
    sums over those points and, when every experiment of `counts` (its number of trainings) has one, the full grid
    extrapolated (per experiment, trainings x mean seconds); each with a 95% percentile interval from `boot`
    bootstrap resamples of the points, with replacement within each experiment, seeded (an experiment sampled once
    adds no spread: named in "one_point_experiments" when it has more trainings than that)."""
    rs = [r for r in rows if base(r) is not None]
    exps = [e for e in counts if counts[e] and any(r.experiment == e for r in rs)]
    b = {e: np.array([base(r).seconds for r in rs if r.experiment == e]) for e in exps}
    s = {e: np.array([solver(r).seconds for r in rs if r.experiment == e]) for e in exps}
    per = np.array([base(r).seconds / solver(r).seconds for r in rs])
    rng = np.random.default_rng(seed)
    draws = {e: rng.integers(0, len(b[e]), size=(boot, len(b[e]))) for e in exps}  # the same draws for both sums
    sum_b, sum_s = sum(b[e].sum() for e in exps), sum(s[e].sum() for e in exps)
    boot_sum = sum(b[e][draws[e]].sum(1) for e in exps) / sum(s[e][draws[e]].sum(1) for e in exps)
    out = {
        "points": len(rs),
        # experiments of several trainings sampled once: the interval cannot see their spread (too narrow)
        "one_point_experiments": [e for e in exps if len(b[e]) == 1 and counts[e] > 1],
        "per_point": {"min": float(per.min()), "median": float(np.median(per)), "max": float(per.max())},
        "sampled": {
            "baseline_s": float(sum_b), "solver_s": float(sum_s), "ratio": float(sum_b / sum_s),
            "ci95": [float(v) for v in np.percentile(boot_sum, [2.5, 97.5])],
        },
        "full_grid_extrapolated": None,
    }  # fmt: skip
    if all(counts[e] == 0 or e in exps for e in counts):
        ext_b = sum(counts[e] * b[e].mean() for e in exps)
        ext_s = sum(counts[e] * s[e].mean() for e in exps)
        boot_ext = sum(counts[e] * b[e][draws[e]].mean(1) for e in exps) / sum(
            counts[e] * s[e][draws[e]].mean(1) for e in exps
        )
        out["full_grid_extrapolated"] = {
            "baseline_s": float(ext_b), "solver_s": float(ext_s), "ratio": float(ext_b / ext_s),
            "ci95": [float(v) for v in np.percentile(boot_ext, [2.5, 97.5])],
            "per_experiment": {
                e: {"trainings": counts[e], "sampled": len(b[e]), "baseline_s": float(counts[e] * b[e].mean()),
                    "solver_s": float(counts[e] * s[e].mean())}
                for e in exps
            },
        }  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------------------
# The run


def single_points(picked: list[Key], count: int | None) -> set[Key]:
    """The `count` points (None: all) that also get the one-core reference: the identity, then one per experiment
    in turn (each experiment's points in sampled order), so a few cover sparse and dense features alike."""
    if count is None or count >= len(picked):
        return set(picked)
    by_exp: dict[str, list[Key]] = {}
    for k in picked:
        by_exp.setdefault(k.experiment, []).append(k)
    order = [ks[i] for i in range(len(picked)) for ks in by_exp.values() if i < len(ks)]
    return set(order[:count])


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    load0 = os.getloadavg()
    print(
        f"machine: {common.cpu_model()}, {len(os.sched_getaffinity(0))} cores, torch {args.threads} threads on "
        f"{device}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, load average {load0[0]:.2f} {load0[1]:.2f} "
        f"{load0[2]:.2f} (other jobs may share this machine: their CPU share is recorded per training)",
        flush=True,
    )
    t_start = time.perf_counter()
    xtr, ytr, xte, yte = voc_like(args.seed, args.n_train, args.n_test, args.dims)
    n = xtr.shape[1]
    print(
        f"data: SYNTHETIC VOC 2007-shaped features, not VOC: {len(xtr)} train / {len(xte)} test x {n} dims, "
        f"{ytr.shape[1]} classes, {(xtr == 0).mean():.0%} zeros, {(ytr == 1).sum(1).mean():.2f} labels per image, "
        f"seed {args.seed} ({time.perf_counter() - t_start:.1f} s)",
        flush=True,
    )
    points = grid_points(n)
    train, alias = trainings(points, xtr, xte)
    n_points = sum(len(v) for v in points.values())
    n_train = {e: len(v) for e, v in train.items()}
    picked = sample(train, args.configs, args.seed)
    preds = {k: predecessor(k, n, alias) for k in picked}
    single = single_points(picked, args.single)
    print(
        f"grid: {n_points} points, {sum(n_train.values())} SVM trainings "
        f"({', '.join(f'{e} {c}' for e, c in n_train.items())}); timing {len(picked)} of them, sklearn on 1 core on "
        f"{len(single)}",
        flush=True,
    )

    def torch_train(a: np.ndarray, start: LinearModel | None = None) -> LinearModel:
        return train_ovr(a, ytr, solver="torch", device=device, tol=args.tol, warm_start=start)

    needed = {p for p in preds.values() if p is not None}  # the untimed predecessors' solutions are kept for these
    solved: dict[Key, LinearModel] = {}
    rows: list[Row] = []
    backend = {"chosen": args.backend}
    t_points = time.perf_counter()

    def visit(k: Key, a: np.ndarray, b: np.ndarray) -> None:
        if k not in preds:  # a predecessor only (the identity always comes first): its solve, untimed
            if k in needed:
                solved[k] = torch_train(a)
            return
        if args.backend == "auto" and k.experiment == "identity":
            backend.update(calibrate(a, ytr))
            print(
                f"  sklearn on 2 cores, joblib: threads {min(backend['seconds']['threading']):.2f} s, loky "
                f"{min(backend['seconds']['loky']):.2f} s (best of {len(backend['seconds']['loky'])}): "
                f"{backend['chosen']}; OneVsRestClassifier(n_jobs=2) "
                f"{', '.join(f'{t:.2f}' for t in backend['one_vs_rest_classifier_s'])} s (first: worker start-up)",
                flush=True,
            )
        p = preds[k]
        todo = ["torch", "sklearn2"] + (["warm"] if p is not None else []) + (["sklearn1"] if k in single else [])
        i = len(rows)
        runs, scores = {}, {}
        for s in todo[i % len(todo) :] + todo[: i % len(todo)]:  # rotated, so no solver always goes first
            if s == "torch":
                runs[s], solved[k], _ = timed(lambda: torch_train(a), b, yte)
            elif s == "warm":
                runs[s], _, _ = timed(lambda: torch_train(a, solved[p]), b, yte)
            elif s == "sklearn2":
                runs[s], _, scores[s] = timed(lambda: sklearn_parallel(a, ytr, 2, backend["chosen"]), b, yte)
            else:
                runs[s], _, scores[s] = timed(lambda: train_ovr(a, ytr, solver="sklearn"), b, yte)
        row = Row(
            k.label(), k.experiment, k.dims, torch=runs["torch"], sklearn2=runs["sklearn2"], warm=runs.get("warm"),
            warm_from=p.label() if p is not None else None, sklearn1=runs.get("sklearn1"),
            load_avg_1min=os.getloadavg()[0],
        )  # fmt: skip
        row.speedup = row.sklearn2.seconds / row.torch.seconds
        row.speedup_chained = row.sklearn2.seconds / row.chained().seconds
        row.max_abs_dmap = max(abs(r.map - row.sklearn2.map) for r in (row.torch, row.warm) if r is not None)
        if row.sklearn1:
            row.speedup_single_chained = row.sklearn1.seconds / row.chained().seconds
            row.single_max_abs_dscore = float(np.abs(scores["sklearn1"] - scores["sklearn2"]).max())
            row.single_abs_dmap = abs(row.sklearn1.map - row.sklearn2.map)
        rows.append(row)
        others = [r.others for r in runs.values() if r.others is not None]
        print(
            f"  {len(rows):3d}/{len(picked)} {row.label:22} sklearn2 {row.sklearn2.seconds:6.2f} s"
            + (f" (1 core {row.sklearn1.seconds:6.2f} s)" if row.sklearn1 else "")
            + f"  torch {row.torch.seconds:5.2f} s ({row.speedup:5.1f}x)"
            + (f"  warm {row.warm.seconds:5.2f} s ({row.speedup_chained:5.1f}x)" if row.warm else "")
            + f"  mAP {row.sklearn2.map:.3f}, |d| {row.max_abs_dmap:.4f}"
            + (f"  others {max(others):.0%}" if others else "")
            + f"  [{time.perf_counter() - t_start:.0f} s]",
            flush=True,
        )

    stress_s = stream(xtr, xte, set(picked) | needed, visit)
    points_s = time.perf_counter() - t_points
    runs_all = [r for row in rows for r in (row.torch, row.warm, row.sklearn2, row.sklearn1) if r is not None]
    known = [r for r in runs_all if r.others is not None]
    others = sum(r.others * r.seconds for r in known) / sum(r.seconds for r in known) if known else None

    def stats(base: Callable[[Row], Run | None], solver: Callable[[Row], Run], seed: int) -> dict:
        return ratios(rows, base, solver, n_train, args.boot, seed)

    two, one = (lambda r: r.sklearn2), (lambda r: r.sklearn1)
    chained, cold = (lambda r: r.chained()), (lambda r: r.torch)
    checked = [r for r in rows if r.sklearn1 is not None]
    result = {
        "command": common.command("stress", args.argv),
        "data": {
            "kind": "synthetic VOC 2007-shaped features (bench.stress.voc_like), not VOC",
            "seed": args.seed, "n_train": len(xtr), "n_test": len(xte), "dims": n, "classes": ytr.shape[1],
            "zeros": float((xtr == 0).mean()), "labels_per_image": float((ytr == 1).sum(1).mean()),
            "difficult": float((ytr == 0).mean()),
        },
        "grid": {
            "points": n_points, "trainings": n_train, "configs_timed": len(rows), "single_core_points": len(checked),
            "sample_seed": args.seed, "stress_transform_s": stress_s, "points_wall_s": points_s,
        },
        "solvers": {
            "torch": f"retr batched truncated Newton, tol={args.tol}, from 0, {args.threads} threads, device {device}",
            "warm": "the same, warm_start = the torch solution of the predecessor point (chained grid)",
            "sklearn2": "LinearSVC(C=1, squared_hinge, l2, dual='auto', tol=1e-5, max_iter=1e5, intercept_scaling=1) "
                        "per class as train_ovr(solver='sklearn') (svm._train_sklearn per column), the classes on 2 "
                        f"joblib workers, backend {backend['chosen']}",
            "sklearn1": "train_ovr(solver='sklearn'): the same LinearSVCs one class at a time, one core",
        },
        "sklearn2_backend": backend,
        "sklearn2_equals_sklearn1": {
            "points": len(checked),
            "max_abs_score_difference": max((r.single_max_abs_dscore for r in checked), default=None),
            "max_abs_map_difference": max((r.single_abs_dmap for r in checked), default=None),
        },
        "machine": {
            "cpu": common.cpu_model(), "cores": len(os.sched_getaffinity(0)), "torch_threads": args.threads,
            "device": device, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "torch_preloaded": _TORCH_PRELOADED,
            "python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
            "sklearn": sklearn.__version__, "joblib": joblib.__version__, "load_avg_start": load0,
            "load_avg_end": os.getloadavg(),
            "others_share": others,
            "others_share_max": max((r.others for r in known), default=None),
            "runs_over_10pct_others": sum(r.others > NOISY for r in known),
            "noisy": None if others is None else others > NOISY,
        },
        "rows": [asdict(r) for r in rows],
        "ratios": {
            "note": "baseline seconds / torch seconds; chained: warm where the point has a predecessor, else cold; "
                    "ci95: 2.5 and 97.5 percentiles of the stratified bootstrap (module doc)",
            "boot": args.boot,
            "sklearn2_vs_torch_chained": stats(two, chained, args.seed),
            "sklearn2_vs_torch_cold": stats(two, cold, args.seed),
            "sklearn1_vs_torch_chained": stats(one, chained, args.seed) if checked else None,
            "sklearn1_vs_torch_cold": stats(one, cold, args.seed) if checked else None,
            "sklearn1_vs_sklearn2": stats(one, two, args.seed) if checked else None,
        },
        "max_abs_dmap": max(r.max_abs_dmap for r in rows),
        "wall_s": time.perf_counter() - t_start,
    }  # fmt: skip
    if args.full_grid:
        print("full grid, measured: run_grid + retr eval's classification score function ...", flush=True)
        full = full_grid(xtr, ytr, xte, yte)
        for b, name in (("sklearn2", "sklearn2_vs_torch_chained"), ("sklearn1", "sklearn1_vs_torch_chained")):
            ext = (result["ratios"][name] or {}).get("full_grid_extrapolated")
            full[f"speedup_vs_{b}_extrapolated"] = ext["baseline_s"] / full["svm_s"] if ext else None
        result["full_grid_measured"] = full
        result["machine"]["load_avg_end"] = os.getloadavg()
    print(table(rows))
    print(summary(result))
    return result


def full_grid(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray) -> dict:
    """The whole default paper grid as `retr eval` runs it on a classification set (module doc), measured: total
    wall seconds, the seconds and number of the SVM trainings, the identity's mAP."""
    ds = ClassificationDataset("voc_like", [f"class{i}" for i in range(ytr.shape[1])], [], ytr, [], yte, "map")
    score = eval_run.classification_scores(ds, solver="torch")
    train_s: list[float] = []

    def timed_score(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
        t = time.perf_counter()
        out = score(a, b)
        train_s.append(time.perf_counter() - t)  # training + scoring the test split (a matrix product, ~1%)
        return out

    t0 = time.perf_counter()
    grid = stress.run_grid(xtr, xte, timed_score, experiments=stress.PAPER_EXPERIMENTS, progress=True)
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall, "svm_s": float(sum(train_s)), "trainings": len(train_s), "points": len(grid.points),
        "tol": eval_run.GRID_SVM_TOL, "identity_map": grid.baseline["map"],
    }


def table(rows: list[Row]) -> str:
    head = (
        f"{'configuration':22} {'dims':>5} {'sk 2c s':>8} {'sk 1c s':>8} {'mAP':>7} {'torch s':>8} {'x':>6} "
        f"{'warm s':>7} {'x chain':>7} {'|dmAP|':>7} {'others':>6} {'load':>5}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        one = f"{r.sklearn1.seconds:8.2f}" if r.sklearn1 else f"{'-':>8}"
        warm = f"{r.warm.seconds:7.2f}" if r.warm else f"{'-':>7}"
        others = [x.others for x in (r.torch, r.warm, r.sklearn2, r.sklearn1) if x is not None and x.others is not None]
        lines.append(
            f"{r.label:22} {r.dims:5d} {r.sklearn2.seconds:8.2f} {one} {r.sklearn2.map:7.3f} {r.torch.seconds:8.2f} "
            f"{r.speedup:6.1f} {warm} {r.speedup_chained:7.1f} {r.max_abs_dmap:7.4f} "
            + (f"{max(others):6.0%}" if others else f"{'-':>6}")
            + f" {r.load_avg_1min:5.2f}"
        )
    return "\n".join(lines)


def _ratio_line(name: str, st: dict | None) -> str:
    if not st:
        return f"{name}: not measured"
    s, g, p = st["sampled"], st["full_grid_extrapolated"], st["per_point"]
    line = (
        f"{name}: sum over {st['points']} points {s['ratio']:.1f}x [{s['ci95'][0]:.1f}, {s['ci95'][1]:.1f}]"
        f" ({s['baseline_s']:.1f} s / {s['solver_s']:.1f} s)"
    )
    if g:
        line += (
            f"; full grid extrapolated {g['ratio']:.1f}x [{g['ci95'][0]:.1f}, {g['ci95'][1]:.1f}]"
            f" ({g['baseline_s'] / 60:.1f} min / {g['solver_s'] / 60:.1f} min)"
        )
    line += f"; per point {p['min']:.1f}x to {p['max']:.1f}x, median {p['median']:.1f}x"
    if st["one_point_experiments"]:
        line += f" (one point of {', '.join(st['one_point_experiments'])}: intervals too narrow)"
    return line


def summary(res: dict) -> str:
    r, m, eq = res["ratios"], res["machine"], res["sklearn2_equals_sklearn1"]
    lines = [
        "ratios, 95% intervals in brackets (stratified bootstrap over the sampled points, "
        f"{r['boot']} resamples):",
        "  " + _ratio_line("sklearn 2 cores / torch chained", r["sklearn2_vs_torch_chained"]),
        "  " + _ratio_line("sklearn 2 cores / torch cold   ", r["sklearn2_vs_torch_cold"]),
        "  " + _ratio_line("sklearn 1 core  / torch chained", r["sklearn1_vs_torch_chained"]),
        "  " + _ratio_line("sklearn 1 core  / torch cold   ", r["sklearn1_vs_torch_cold"]),
        "  " + _ratio_line("sklearn 1 core  / sklearn 2 cores", r["sklearn1_vs_sklearn2"]),
        f"sklearn on 2 cores: joblib {res['sklearn2_backend']['chosen']}; same scores as on 1 core on "
        f"{eq['points']} points: max |score difference| {eq['max_abs_score_difference']}, max |mAP difference| "
        f"{eq['max_abs_map_difference']}",
        f"max |mAP difference| torch - sklearn over {res['grid']['configs_timed']} points: "
        f"{res['max_abs_dmap']:.4f} points (target < 0.1)",
        f"others' CPU share during the timed trainings {m['others_share']:.1%} (max {m['others_share_max']:.0%}, "
        f"{m['runs_over_10pct_others']} runs over 10%): {'NOISY' if m['noisy'] else 'quiet'}; load average "
        f"{m['load_avg_start'][0]:.2f} at the start, {m['load_avg_end'][0]:.2f} at the end; "
        f"wall {res['wall_s'] / 60:.1f} min (stress transforms {res['grid']['stress_transform_s']:.0f} s)"
        if m["others_share"] is not None
        else "others' CPU share: unknown (no /proc/stat)",
    ]
    if "full_grid_measured" in res:
        f = res["full_grid_measured"]
        lines.append(
            f"full grid, MEASURED as retr eval runs it ({f['points']} points, {f['trainings']} trainings, tol "
            f"{f['tol']:g}, chained warm starts): SVMs {f['svm_s'] / 60:.1f} min, whole grid {f['wall_s'] / 60:.1f} "
            f"min; vs sklearn's extrapolated 2 cores: {f['speedup_vs_sklearn2_extrapolated']:.1f}x"
            + (
                f", 1 core: {f['speedup_vs_sklearn1_extrapolated']:.1f}x"
                if f["speedup_vs_sklearn1_extrapolated"]
                else ""
            )
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", type=int, default=60, help="grid points timed, the identity included (>= 7)")
    ap.add_argument("--single", type=int, default=None,
                    help="points that also get the one-core LinearSVC reference (default: all; the identity and "
                         "one per experiment first); 0: none")
    ap.add_argument("--backend", choices=BACKENDS, default="auto",
                    help="joblib backend of the 2-core LinearSVC baseline; auto: both timed at the identity, the "
                         "faster kept")
    ap.add_argument("--boot", type=int, default=2000, help="bootstrap resamples of the ratios' 95%% intervals")
    ap.add_argument("--tol", type=float, default=1e-5, help="the torch solver's relative gradient-norm tolerance")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--device", default="auto", help="torch solver device: auto (CUDA when present), cpu, cuda")
    ap.add_argument("--seed", type=int, default=0, help="data, sample and bootstrap seed")
    ap.add_argument("--n-train", type=int, default=5011, help="training vectors (VOC 2007: 5,011)")
    ap.add_argument("--n-test", type=int, default=4952, help="test vectors (VOC 2007: 4,952)")
    ap.add_argument("--dims", type=int, default=4096, help="feature dimensions (fc7: 4,096)")
    ap.add_argument("--full-grid", action="store_true",
                    help="also run the whole grid as `retr eval` does, timed (about 10 more minutes on 2 cores)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="JSON results")
    return common.main(ap, run, argv)


if __name__ == "__main__":
    main()
