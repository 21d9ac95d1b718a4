"""Stress-grid SVM benchmark: retr's batched torch solver against scikit-learn's LinearSVC on the VOC 2007 grid.

    python -m bench.stress                      # 12 configurations, both solvers: about 8 minutes on 2 CPU cores
    python -m bench.stress --configs 8 --out b.json

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
sign gives all-zero features). Training all of them on 2 cores takes hours with LinearSVC, so this times a seeded
subset: the identity plus `--configs` - 1 points drawn uniformly within each experiment (at least one each, the rest
in proportion to the experiment's number of trainings), their stressed features made by run_grid itself.

Per point, on the same stressed, L2-normalised features, interleaved (the order alternates):
- ``sklearn``: `train_ovr(solver="sklearn")`, LinearSVC one class at a time (LIBLINEAR, single-threaded), the
  reference of every ratio and mAP difference;
- ``torch``: `train_ovr(solver="torch", tol=--tol)` from w = 0 (all 20 classes in one batched solve);
- ``torch warm``: the same, started from the torch solution of the point's predecessor in a chained run of the grid
  (`warm_start`): q1 / q2 at h - 1 (h = 2: the identity), qb64 / qb32 at k - 1, fc at (p, h - 1) (h = 2: dr2 at p,
  the same PCA axes). The predecessor's own training is not timed. dr1 (each repetition draws other dimensions) and
  dr2 (each size has other dimensions) have no predecessor and run cold in a chained grid too.
Only training is timed (the stress transforms and the scoring are the same for both). mAP: VOC 2007 11-point, 0-100.

Full grid: an extrapolation, not a measurement: per experiment, its number of trainings times the mean of its sampled
points (torch: warm where the point has a predecessor, cold otherwise), summed.

``--full-grid`` also runs the whole grid as `retr eval voc2007` does, measured: `stress.run_grid` with
`retr.eval.run.classification_scores` (the torch solver at `run.GRID_SVM_TOL`, each training warm-started from the
previous one of the same dimension), every training timed, plus the grid's total wall time (stress transforms and
scoring included). LinearSVC's side of that ratio stays the extrapolation (hours on 2 cores).

Results: a table on stdout and `--out` (default bench/results/stress.json): machine, versions, threads, load average,
every time with its baseline from the same run.
"""

from __future__ import annotations

import os
import sys

# libgomp's default busy-waiting makes torch's 2 OpenMP threads spin against anything else on a shared 2-core
# machine; passive waiting is the fair setting (bench/encode.py measured the same). Only effective before torch loads.
_TORCH_PRELOADED = "torch" in sys.modules
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import sklearn  # noqa: E402
import torch  # noqa: E402

from bench import common  # noqa: E402
from retr.eval import run as eval_run  # noqa: E402
from retr.eval import stress  # noqa: E402
from retr.eval.datasets import ClassificationDataset  # noqa: E402
from retr.eval.metrics import voc_map  # noqa: E402
from retr.eval.svm import LinearModel, decision, train_ovr  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "stress.json"
EXPERIMENTS = ("dr1", "dr2", "q1", "q2", "qb64", "qb32", "fc")
REPS = 10  # run_grid's default dr1 repetitions
LEVELS = range(2, 31)  # run_grid's default q1 / q2 levels


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
    def of(cls, p: stress.Point) -> Key:
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


def trainings(points: dict[str, list[Key]], xtr: np.ndarray, xte: np.ndarray, rows: int = 256) -> dict[str, list[Key]]:
    """The points that need an SVM training of their own, as run_grid's memo decides (bit-identical stressed and
    normalised features share one): dr1 at the full size keeps every dimension in order, the identity; qb64 / qb32
    decided on the first `rows` rows of each split (the erasure is per value, so identical rows are identical
    features; a false match would need every one of those values to agree)."""
    n = xtr.shape[1]
    seen: set[str] = set()

    def digest(a: np.ndarray, b: np.ndarray) -> str:
        h = hashlib.blake2b(digest_size=20)
        for x in (stress.l2_normalize(a), stress.l2_normalize(b)):
            h.update(np.ascontiguousarray(x).data)
        return h.hexdigest()

    seen.add(digest(xtr[:rows].astype(np.float32), xte[:rows].astype(np.float32)))
    out = {"identity": points["identity"], "dr1": [k for k in points["dr1"] if k.dims < n]}
    out["dr2"], out["q1"], out["q2"], out["fc"] = points["dr2"], points["q1"], points["q2"], points["fc"]
    for e, width in (("qb64", 64), ("qb32", 32)):  # in run_grid's order: qb64 first, so qb32 reuses its points
        out[e] = []
        for k in points[e]:
            h = digest(stress.erase_bits(xtr[:rows], k.bits, width), stress.erase_bits(xte[:rows], k.bits, width))
            if h not in seen:
                seen.add(h)
                out[e].append(k)
    return {e: out[e] for e in points}


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


def predecessor(k: Key, n: int) -> Key | None:
    """The point a chained grid run warm-starts k from (module doc), or None."""
    if k.experiment in ("q1", "q2"):
        return Key(k.experiment, n, levels=k.levels - 1) if k.levels > 2 else Key("identity", n)
    if k.experiment in ("qb64", "qb32"):
        return Key(k.experiment, n, bits=k.bits - 1) if k.bits > 0 else Key("identity", n)
    if k.experiment == "fc":
        return Key("fc", k.dims, levels=k.levels - 1) if k.levels > 2 else Key("dr2", k.dims)
    return None


def stressed(xtr: np.ndarray, xte: np.ndarray, keys: list[Key]) -> dict[Key, tuple[np.ndarray, np.ndarray]]:
    """The stressed, L2-normalised (train, test) features of `keys`, made by run_grid (capturing its score_fn's
    inputs): one call per group of experiments, fitted PCA shared by dr2 and fc. Points run_grid makes beyond `keys`
    (its option lists are crossed: F sampled fc points and their predecessors make up to 2 F^2, about 3 GB at the
    default) are dropped after their call; the memo's shared points get the features they share."""
    n = xtr.shape[1]
    out: dict[Key, tuple[np.ndarray, np.ndarray]] = {}
    want = set(keys)

    def run(experiments: tuple[str, ...], **kw) -> None:
        captured: list[tuple[np.ndarray, np.ndarray]] = []

        def collect(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
            captured.append((a, b))
            return {"i": float(len(captured) - 1)}

        res = stress.run_grid(xtr, xte, collect, experiments, progress=False, **kw)
        for p in res.points:
            k = Key.of(p)
            if k.experiment == "identity" or k in want:
                out.setdefault(k, captured[int(p.scores["i"])])

    by_exp: dict[str, list[Key]] = {}
    for k in keys:
        by_exp.setdefault(k.experiment, []).append(k)
    run(())  # the identity alone
    pca = tuple(e for e in ("dr2", "fc") if e in by_exp)
    if pca:  # one call: run_grid fits the PCA once per call (about 40 s here)
        dr2, fc = by_exp.get("dr2", []), by_exp.get("fc", [])
        run(
            pca,
            dr_sizes=sorted({k.dims for k in dr2}) or [n],
            fc_dims=sorted({k.dims for k in fc}) or [n],
            fc_levels=sorted({k.levels for k in fc}) or [2],
        )
    for k in by_exp.get("dr1", []):
        run(("dr1",), dr_sizes=[k.dims], reps=k.rep + 1)
    for e in ("q1", "q2"):
        if e in by_exp:
            run((e,), levels=sorted({k.levels for k in by_exp[e]}))
    for e in ("qb64", "qb32"):
        if e in by_exp:
            run((e,), qb_bits=sorted({k.bits for k in by_exp[e]}))
    missing = [k.label() for k in keys if k not in out]
    if missing:
        raise RuntimeError(f"run_grid made no features for {missing}")
    return {k: out[k] for k in keys}


# ---------------------------------------------------------------------------------------------------------
# Timing


@dataclass
class Run:
    """One training: wall seconds, this process's CPU seconds, the share of the machine's CPU time that went to
    other processes meanwhile, and the test mAP (0-100)."""

    seconds: float
    cpu_s: float
    others: float | None
    map: float


def timed(train: Callable[[], LinearModel], xte: np.ndarray, yte: np.ndarray) -> tuple[Run, LinearModel]:
    m0, w0, c0 = common.machine_cpu_s(), time.perf_counter(), time.process_time()
    model = train()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    m1, wall, cpu = common.machine_cpu_s(), time.perf_counter() - w0, time.process_time() - c0
    others = None if m0 is None or m1 is None else max(0.0, (m1[0] - m0[0]) - cpu) / max(m1[1] - m0[1], 1e-9)
    return Run(wall, cpu, others, 100 * voc_map(decision(model, xte), yte)[0]), model


@dataclass
class Row:
    """One point measured: its label, experiment, dims, the three runs, and its predecessor's label (warm only)."""

    label: str
    experiment: str
    dims: int
    sklearn: Run
    torch: Run
    warm: Run | None = None
    warm_from: str | None = None
    speedup: float = 0.0
    speedup_warm: float | None = None
    max_abs_dmap: float = 0.0
    load_avg_1min: float = 0.0


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    load0 = os.getloadavg()
    print(
        f"machine: {common.cpu_model()}, {len(os.sched_getaffinity(0))} cores, torch {args.threads} threads on "
        f"{device}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, load average {load0[0]:.2f} {load0[1]:.2f} "
        f"{load0[2]:.2f} (other jobs share this machine: times are noisy, ratios come from the same run)",
        flush=True,
    )
    t0 = time.perf_counter()
    xtr, ytr, xte, yte = voc_like(args.seed, args.n_train, args.n_test, args.dims)
    n = xtr.shape[1]
    print(
        f"data: SYNTHETIC VOC 2007-shaped features, not VOC: {len(xtr)} train / {len(xte)} test x {n} dims, "
        f"{ytr.shape[1]} classes, {(xtr == 0).mean():.0%} zeros, {(ytr == 1).sum(1).mean():.2f} labels per image, "
        f"seed {args.seed} ({time.perf_counter() - t0:.1f} s)",
        flush=True,
    )

    points = grid_points(n)
    train = trainings(points, xtr, xte)
    n_points = sum(len(v) for v in points.values())
    n_train = {e: len(v) for e, v in train.items()}
    print(
        f"grid: {n_points} points, {sum(n_train.values())} SVM trainings "
        f"({', '.join(f'{e} {c}' for e, c in n_train.items())})",
        flush=True,
    )
    picked = sample(train, args.configs, args.seed)
    preds = {k: predecessor(k, n) for k in picked}
    t0 = time.perf_counter()
    feats = stressed(xtr, xte, picked + [p for p in preds.values() if p is not None and p not in picked])
    stress_s = time.perf_counter() - t0
    print(f"stressed features of {len(feats)} points by run_grid in {stress_s:.1f} s", flush=True)

    def torch_train(k: Key, start: LinearModel | None = None) -> LinearModel:
        return train_ovr(feats[k][0], ytr, solver="torch", device=device, tol=args.tol, warm_start=start)

    rows: list[Row] = []
    solved: dict[Key, LinearModel] = {}  # torch solutions, the warm starts
    for i, k in enumerate(picked):
        a, b = feats[k]
        order = ("sklearn", "torch") if i % 2 == 0 else ("torch", "sklearn")
        runs = {}
        for s in order:
            if s == "sklearn":
                runs[s], _ = timed(lambda: train_ovr(a, ytr, solver="sklearn"), b, yte)
            else:
                runs[s], solved[k] = timed(lambda: torch_train(k), b, yte)
        row = Row(k.label(), k.experiment, k.dims, runs["sklearn"], runs["torch"], load_avg_1min=os.getloadavg()[0])
        p = preds[k]
        if p is not None:
            if p not in solved:
                solved[p] = torch_train(p)  # the predecessor's own training, untimed
            row.warm, _ = timed(lambda: torch_train(k, solved[p]), b, yte)
            row.warm_from = p.label()
        row.speedup = row.sklearn.seconds / row.torch.seconds
        row.speedup_warm = row.sklearn.seconds / row.warm.seconds if row.warm else None
        row.max_abs_dmap = max(abs(r.map - row.sklearn.map) for r in (row.torch, row.warm) if r is not None)
        rows.append(row)
        print(
            f"  {row.label:22} sklearn {row.sklearn.seconds:6.2f} s  torch {row.torch.seconds:5.2f} s "
            f"({row.speedup:5.1f}x)"
            + (f"  warm {row.warm.seconds:5.2f} s ({row.speedup_warm:5.1f}x)" if row.warm else "")
            + f"  mAP {row.sklearn.map:.3f}, |d| {row.max_abs_dmap:.4f}",
            flush=True,
        )

    # Full grid: trainings per experiment x the mean of its sampled points
    extrap = {}
    for e in ("identity",) + EXPERIMENTS:
        rs = [r for r in rows if r.experiment == e]
        if not rs:  # an experiment whose points all reuse other trainings
            continue
        grid = [(r.warm or r.torch).seconds for r in rs]
        extrap[e] = {
            "trainings": n_train[e],
            "sampled": len(rs),
            "sklearn_s": n_train[e] * float(np.mean([r.sklearn.seconds for r in rs])),
            "torch_cold_s": n_train[e] * float(np.mean([r.torch.seconds for r in rs])),
            "torch_chained_s": n_train[e] * float(np.mean(grid)),
        }
    tot = {s: sum(v[s] for v in extrap.values()) for s in ("sklearn_s", "torch_cold_s", "torch_chained_s")}
    sampled = {
        "sklearn_s": sum(r.sklearn.seconds for r in rows),
        "torch_cold_s": sum(r.torch.seconds for r in rows),
        "torch_chained_s": sum((r.warm or r.torch).seconds for r in rows),
    }
    load1 = os.getloadavg()
    result = {
        "command": common.command("stress", args.argv),
        "data": {
            "kind": "synthetic VOC 2007-shaped features (bench.stress.voc_like), not VOC",
            "seed": args.seed,
            "n_train": len(xtr),
            "n_test": len(xte),
            "dims": n,
            "classes": ytr.shape[1],
            "zeros": float((xtr == 0).mean()),
            "labels_per_image": float((ytr == 1).sum(1).mean()),
            "difficult": float((ytr == 0).mean()),
        },
        "grid": {
            "points": n_points,
            "trainings": n_train,
            "configs_timed": len(rows),
            "sample_seed": args.seed,
            "stress_transform_s": stress_s,
        },
        "solvers": {
            "sklearn": "LinearSVC(C=1, squared_hinge, l2, dual='auto', tol=1e-5), one class at a time",
            "torch": f"retr batched truncated Newton, tol={args.tol}, device {device}",
            "torch_warm": "the same, warm_start = the torch solution of the predecessor point",
        },
        "machine": {
            "cpu": common.cpu_model(),
            "cores": len(os.sched_getaffinity(0)),
            "torch_threads": args.threads,
            "device": device,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "torch_preloaded": _TORCH_PRELOADED,
            "python": platform.python_version(),
            "numpy": np.__version__,
            "torch": torch.__version__,
            "sklearn": sklearn.__version__,
            "load_avg_start": load0,
            "load_avg_end": load1,
        },
        "rows": [asdict(r) for r in rows],
        "sampled_total": sampled
        | {
            "speedup": sampled["sklearn_s"] / sampled["torch_cold_s"],
            "speedup_chained": sampled["sklearn_s"] / sampled["torch_chained_s"],
        },
        "full_grid_extrapolated": {
            "note": "extrapolation: per experiment, trainings x mean of its sampled points",
            "per_experiment": extrap,
            **tot,
            "speedup": tot["sklearn_s"] / tot["torch_cold_s"],
            "speedup_chained": tot["sklearn_s"] / tot["torch_chained_s"],
        },
        "max_abs_dmap": max(r.max_abs_dmap for r in rows),
    }
    if args.full_grid:
        print("full grid, measured: run_grid + retr eval's classification score function ...", flush=True)
        full = full_grid(xtr, ytr, xte, yte)
        full["speedup_vs_sklearn_extrapolated"] = tot["sklearn_s"] / full["svm_s"]
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
        f"{'configuration':22} {'dims':>5} {'sklearn s':>9} {'mAP':>7} {'torch s':>8} {'mAP':>7} {'x':>6} "
        f"{'warm s':>7} {'mAP':>7} {'x':>6} {'|dmAP|':>7} {'load':>5}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        w = (
            f"{r.warm.seconds:7.2f} {r.warm.map:7.3f} {r.speedup_warm:6.1f}"
            if r.warm
            else f"{'-':>7} {'-':>7} {'-':>6}"
        )
        lines.append(
            f"{r.label:22} {r.dims:5d} {r.sklearn.seconds:9.2f} {r.sklearn.map:7.3f} {r.torch.seconds:8.2f} "
            f"{r.torch.map:7.3f} {r.speedup:6.1f} {w} {r.max_abs_dmap:7.4f} {r.load_avg_1min:5.2f}"
        )
    return "\n".join(lines)


def summary(res: dict) -> str:
    s, g = res["sampled_total"], res["full_grid_extrapolated"]
    lines = [
        f"sampled {res['grid']['configs_timed']} configurations: sklearn {s['sklearn_s']:.1f} s, torch "
        f"{s['torch_cold_s']:.1f} s cold ({s['speedup']:.1f}x), {s['torch_chained_s']:.1f} s chained "
        f"({s['speedup_chained']:.1f}x); max |mAP difference| {res['max_abs_dmap']:.4f} points (target < 0.1)",
        f"full grid, EXTRAPOLATED ({sum(res['grid']['trainings'].values())} trainings, each experiment's count x its "
        f"sampled mean): sklearn {g['sklearn_s'] / 3600:.2f} h, torch {g['torch_cold_s'] / 60:.1f} min cold "
        f"({g['speedup']:.1f}x), {g['torch_chained_s'] / 60:.1f} min chained ({g['speedup_chained']:.1f}x); "
        f"target >= 20x",
        f"load average {res['machine']['load_avg_start'][0]:.2f} at the start, {res['machine']['load_avg_end'][0]:.2f}"
        f" at the end",
    ]
    if "full_grid_measured" in res:
        f = res["full_grid_measured"]
        lines.insert(2, (
            f"full grid, MEASURED as retr eval runs it ({f['points']} points, {f['trainings']} trainings, tol "
            f"{f['tol']:g}, chained warm starts): SVMs {f['svm_s'] / 60:.1f} min, whole grid {f['wall_s'] / 60:.1f} "
            f"min; vs sklearn's extrapolated {g['sklearn_s'] / 3600:.2f} h: {f['speedup_vs_sklearn_extrapolated']:.1f}x"
        ))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", type=int, default=12, help="grid points timed, the identity included (>= 8)")
    ap.add_argument("--tol", type=float, default=1e-5, help="the torch solver's relative gradient-norm tolerance")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (LinearSVC is single-threaded)")
    ap.add_argument("--device", default="auto", help="torch solver device: auto (CUDA when present), cpu, cuda")
    ap.add_argument("--seed", type=int, default=0, help="data and sample seed")
    ap.add_argument("--n-train", type=int, default=5011, help="training vectors (VOC 2007: 5,011)")
    ap.add_argument("--n-test", type=int, default=4952, help="test vectors (VOC 2007: 4,952)")
    ap.add_argument("--dims", type=int, default=4096, help="feature dimensions (fc7: 4,096)")
    ap.add_argument("--full-grid", action="store_true",
                    help="also run the whole grid as `retr eval` does, timed (about 10 more minutes on 2 cores)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="JSON results")
    return common.main(ap, run, argv)


if __name__ == "__main__":
    main()
