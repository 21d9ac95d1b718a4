"""One-vs-rest linear SVMs, as in the paper: LIBLINEAR's L2-regularised L2-loss SVM with C = 1.

Each class c gets its own binary problem over the training examples whose label is not 0:

    min_w  0.5 ||w||^2 + C sum_i max(0, 1 - y_i w . [x_i, 1])^2          w = [W_c, b_c]

The bias is LIBLINEAR's: a constant feature 1 appended to every x, its weight regularised like the others
(scikit-learn's LinearSVC with intercept_scaling=1 does the same). Two solvers reach that optimum:

- "sklearn": LinearSVC (which is LIBLINEAR), one class at a time. The reference.
- "torch": all classes at once by a truncated Newton method, as LIBLINEAR's primal solver: conjugate
  gradients on Hessian-vector products, then an Armijo line search, until the gradient norm falls below `tol`
  times its norm at w = 0. The products with X are float32, bfloat16 in the Hessian-vector products where that
  is native (CUDA, AVX512-BF16 CPUs): they only steer; weights, decision values and objectives are float64.
  The preconditioner is exact on the top-64 eigenvectors of X^T X (a seeded randomized range finder, shared by
  the classes) and diagonal elsewhere, so each Newton step takes a few conjugate gradient steps. Its objective
  ends at or below LinearSVC's; tests/test_svm.py checks the optimum by hand and the mAP against the
  reference (within 0.1 point). It is the default ("auto"). `warm_start` starts it from a neighbouring
  problem's weights (the previous point of a stress grid: q2 with h - 1 levels, ...). The same code runs on a
  CUDA device. Speed against LinearSVC on the paper's VOC 2007-shaped grid (5011 x 4096, 20 classes, 2 CPU
  cores): `python -m bench.stress`, figures in bench/README.md.

Label 0 (VOC "difficult") leaves the example out of that class's training, the usual VOC practice (the
devkit ignores such examples when scoring, and metrics.voc_map does too).

Legend: n examples, d feature dimensions, C classes (inside the solvers the number of classes is n_cls and
the constant C is `cost`), W (C, d + 1) the weights with the bias last, Z = X W^T the decision values,
r = max(0, 1 - y z) the hinge residuals, G the gradients, S the Newton steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..retrieval.errors import ConfigError, DatasetError
from .metrics import accuracy, voc_map

SOLVERS = ("auto", "torch", "sklearn")
DEFAULT_SOLVER = "torch"  # what "auto" picks: faster than LinearSVC on VOC-sized problems (module doc)
_RANK = 64  # eigenvectors of X^T X in the torch solver's preconditioner (fewer: more CG steps; more: costlier setup)


@dataclass(frozen=True, eq=False)
class LinearModel:
    """C linear scorers: score(x) = x @ W.T + b. W (C, d) float64, b (C,) float64."""

    W: np.ndarray
    b: np.ndarray


def _check(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise ValueError(f"x must be (n, d) and y (n, C) with the same n, got {x.shape} and {y.shape}")
    if not np.isin(y, (-1, 0, 1)).all():
        raise ValueError("labels must be 1 (positive), -1 (negative) or 0 (difficult, left out)")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or inf")
    for c in range(y.shape[1]):
        if not ((y[:, c] == 1).any() and (y[:, c] == -1).any()):
            raise DatasetError(
                f"class {c} has no positive or no negative training example; drop the class or add examples"
            )
    return x, y


def train_ovr(
    x: np.ndarray,
    y: np.ndarray,
    C: float = 1.0,
    solver: str = "auto",
    device: str = "auto",
    tol: float = 1e-6,
    warm_start: LinearModel | None = None,
) -> LinearModel:
    """Train one L2-loss linear SVM per class (module doc).

    x: (n, d) float features (the paper L2-normalises them first; this function takes them as they are);
    y: (n, C) int labels in {1, -1, 0}, 0 = left out of that class's training; C: regularisation constant;
    solver: "torch" (batched Newton), "sklearn" (LinearSVC, CPU) or "auto" (DEFAULT_SOLVER); device: the
    torch solver's device, "auto" = CUDA when available, else CPU; tol: the torch solver's relative
    gradient-norm tolerance; warm_start: a model with the same C and d (e.g. the previous point of a stress
    grid) the torch solver starts from if it is near this problem's optimum (every class's gradient there
    below a tenth of its gradient at 0), else it starts from 0: the optimum is the same, reached in fewer steps
    when the problems are close. "sklearn" ignores it (LinearSVC always starts from 0). Raises DatasetError
    when a class lacks positives or negatives.
    """
    if solver not in SOLVERS:
        raise ConfigError(f"unknown SVM solver {solver!r}; use one of {', '.join(SOLVERS)}")
    if not C > 0:
        raise ConfigError(f"the SVM constant C must be positive, not {C!r}")
    x, y = _check(x, y)
    if warm_start is not None and warm_start.W.shape != (y.shape[1], x.shape[1]):
        raise ValueError(f"warm_start has W {warm_start.W.shape}, this problem needs {(y.shape[1], x.shape[1])}")
    if (DEFAULT_SOLVER if solver == "auto" else solver) == "sklearn":
        return _train_sklearn(x, y, C)
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return _train_torch(x, y, C, device, tol, warm_start)


def _train_sklearn(x: np.ndarray, y: np.ndarray, cost: float) -> LinearModel:
    from sklearn.svm import LinearSVC

    n_cls, d = y.shape[1], x.shape[1]
    W, b = np.zeros((n_cls, d)), np.zeros(n_cls)
    for c in range(n_cls):
        keep = y[:, c] != 0
        svm = LinearSVC(
            C=cost, loss="squared_hinge", penalty="l2", dual="auto", tol=1e-5, max_iter=100_000,
            fit_intercept=True, intercept_scaling=1.0, random_state=0,
        )  # fmt: skip
        svm.fit(x[keep].astype(np.float64), y[keep, c])
        # LinearSVC orders classes [-1, 1], so positive scores mean class +1
        W[c], b[c] = svm.coef_[0], svm.intercept_[0]
    return LinearModel(W=W, b=b)


def _train_torch(
    x: np.ndarray, y: np.ndarray, cost: float, device: str, tol: float, start: LinearModel | None
) -> LinearModel:
    import torch

    dev = torch.device(device)
    f32, f64 = torch.float32, torch.float64
    used = (y != 0).any(1)  # examples left out of every class play no part: drop them
    x, y = x[used], y[used]
    n, d = x.shape
    n_cls = y.shape[1]
    # The matrix products with X are nearly all the time: X is float32 (half the memory traffic of float64, about
    # 3x faster on CPU), and the Hessian-vector products, which only steer, use a bfloat16 copy where that is native
    # (half again). Weights, decision values, objectives and gradient norms are float64 (they are small).
    X = torch.ones((n, d + 1), dtype=f32, device=dev)  # the bias as a constant feature 1 (LIBLINEAR's)
    X[:, :d] = torch.as_tensor(np.asarray(x), device=dev)
    low = _steering_dtype(dev)
    Xs = X.to(low)
    Y = torch.as_tensor(y.astype(np.float64), device=dev)  # (n, C), 0 = left out
    keep = (Y != 0).to(f64)
    two_c = 2.0 * cost

    def objective(W: torch.Tensor, Z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Objective (C,) and hinge residuals r = max(0, 1 - y z) (n, C), 0 where left out."""
        r = torch.clamp(1.0 - Y * Z, min=0.0) * keep
        return 0.5 * (W * W).sum(1) + cost * (r * r).sum(0), r

    W = torch.zeros((n_cls, d + 1), dtype=f64, device=dev)
    Z = torch.zeros((n, n_cls), dtype=f64, device=dev)
    g0 = None  # the gradient norm at w = 0, the scale of `tol`
    if start is not None:
        W1 = torch.as_tensor(np.hstack([start.W, start.b[:, None]]), dtype=f64, device=dev)
        Z1 = (X @ W1.to(f32).T).to(f64)
        P = torch.cat([Y, Y * objective(W1, Z1)[1]], 1).to(f32).T @ X  # the gradients at 0 and at W1
        g0 = two_c * P[:n_cls].to(f64).norm(dim=1)
        # Taken only if every class starts nearer its optimum than the first Newton step from 0 gets (about a
        # tenth of the gradient at 0): the classes are solved together, and one far class (q2 at h = 2 from the
        # identity) takes more steps from the warm start than from 0.
        if ((W1 - two_c * P[n_cls:].to(f64)).norm(dim=1) < 0.1 * g0).all():
            W, Z = W1, Z1
    Q, XQ = _top_subspace(X, min(_RANK, d + 1))

    f, r = objective(W, Z)
    stalled = torch.zeros(n_cls, dtype=torch.bool, device=dev)  # no decrease found along the step: float's limit
    diag = None
    for _ in range(200):
        G = W - two_c * ((Y * r).to(f32).T @ X).to(f64)
        gn = G.norm(dim=1)
        g0 = gn if g0 is None else g0
        todo = (gn > tol * g0) & ~stalled
        if not todo.any():
            break
        A = (r > 0).to(f32)  # (n, C) active examples: the generalised Hessian is H = I + 2C X_A^T X_A
        # Preconditioner: H exactly on the span of Q (the top eigenvectors of X^T X, where CNN features put
        # most of their energy: nonnegative features share a large mean, then a decaying spectrum), and H's
        # diagonal on the rest. K = Q^T H Q (C, k, k) follows the active sets; the diagonal is the first step's
        # (recomputing it, one more product with X per step, saved no conjugate gradient steps).
        K = torch.eye(Q.shape[1], device=dev) + two_c * torch.einsum("nk,nc,nl->ckl", XQ, A, XQ)
        L = torch.linalg.cholesky(K)
        if diag is None:
            diag = 1.0 + two_c * (A.T @ (X * X))

        def precond(R: torch.Tensor) -> torch.Tensor:
            Rq = R @ Q
            inside = torch.cholesky_solve(Rq[:, :, None], L)[:, :, 0] @ Q.T
            rest = (R - Rq @ Q.T) / diag
            return inside + rest - (rest @ Q) @ Q.T

        def hess(V: torch.Tensor) -> torch.Tensor:
            XV = (Xs @ V.to(low).T).to(f32)
            return V + two_c * ((A * XV).to(low).T @ Xs).to(f32)

        S = _pcg(hess, -G.to(f32), precond, tol_rel=0.1, todo=todo)
        Zs = (X @ S.T).to(f64)
        S = S.to(f64)
        gs = (G * S).sum(1)
        ww, ws, ss = (W * W).sum(1), (W * S).sum(1), (S * S).sum(1)
        t = todo.to(f64)
        # Armijo backtracking, per class; the objective along S is cheap given Zs = X S^T
        for _halving in range(40):
            rt = torch.clamp(1.0 - Y * (Z + t * Zs), min=0.0) * keep
            ft = 0.5 * (ww + 2 * t * ws + t * t * ss) + cost * (rt * rt).sum(0)
            ok = ft <= f + 1e-4 * t * gs
            if ok.all():
                break
            t = torch.where(ok, t, 0.5 * t)
        stalled |= ~ok
        t = torch.where(ok, t, torch.zeros_like(t))
        W = W + t[:, None] * S
        Z = Z + t * Zs
        f, r = objective(W, Z)
    Wn = W.cpu().numpy()
    return LinearModel(W=Wn[:, :d].copy(), b=Wn[:, d].copy())


def _top_subspace(X, k: int, power: int = 1):
    """Q (d, k') orthonormal, spanning about the top eigenvectors of X^T X, and XQ = X Q (n, k'); X (n, d) float32.

    The randomized range finder with `power` subspace iterations (Halko, Martinsson, Tropp 2011), seeded: 2 (power
    + 1) products of X with k columns, cheap next to the solve. k' <= k: directions X does not span are dropped.
    """
    import torch

    g = torch.Generator().manual_seed(0)
    Q = torch.randn(X.shape[1], k, generator=g).to(X.device)
    for _ in range(power + 1):
        Q = _orthonormal((X.T @ (X @ Q)).double()).to(X.dtype)
    return Q, X @ Q


def _orthonormal(V):
    """Orthonormal columns spanning V (m, k) float64, those below 1e-5 of its largest singular value dropped.

    By the eigendecomposition of V^T V, twice (the second pass fixes the first one's rounding): LAPACK's threaded
    QR took 170 ms on 2 busy CPU cores for a 4097 x 64 V, this takes 6 ms.
    """
    import torch

    for _ in range(2):
        lam, U = torch.linalg.eigh(V.T @ V)
        ok = lam > 1e-10 * lam[-1]
        V = V @ (U[:, ok] / lam[ok].sqrt())
    return V


def _pcg(hess, B, precond, tol_rel: float, todo, max_iter: int = 500):
    """Preconditioned conjugate gradients for H_c s_c = B_c, every row c at once.

    hess: V (C, d) -> H V row-wise; B (C, d); precond: R -> M^-1 R row-wise; a row stops when its residual
    norm is below tol_rel times ||B_c|| (the truncated Newton forcing term), or is not in `todo`.
    """
    import torch

    S = torch.zeros_like(B)
    R = B.clone()
    Zr = precond(R)
    P = Zr.clone()
    rz = (R * Zr).sum(1)
    stop = tol_rel * B.norm(dim=1)
    live = todo.clone()
    for _ in range(max_iter):
        live &= R.norm(dim=1) > stop
        if not live.any():
            break
        HP = hess(P)
        php = (P * HP).sum(1)
        alpha = torch.where(live, rz / torch.where(php > 0, php, torch.ones_like(php)), torch.zeros_like(rz))
        S = S + alpha[:, None] * P
        R = R - alpha[:, None] * HP
        Zr = precond(R)
        rz_new = (R * Zr).sum(1)
        beta = torch.where(live, rz_new / torch.where(rz > 0, rz, torch.ones_like(rz)), torch.zeros_like(rz))
        P = torch.where(live[:, None], Zr + beta[:, None] * P, P)
        rz = torch.where(live, rz_new, rz)
    return S


def _steering_dtype(dev):
    """bfloat16 where its matrix products are native (CUDA; CPUs with AVX512-BF16 or AMX), else float32."""
    import torch

    if dev.type == "cuda":
        return torch.bfloat16
    caps = torch.cpu.get_capabilities() if dev.type == "cpu" else {}
    return torch.bfloat16 if caps.get("avx512_bf16") or caps.get("amx_bf16") else torch.float32


def decision(model: LinearModel, x: np.ndarray) -> np.ndarray:
    """Scores (n, C) float64 = x @ W.T + b for features x (n, d)."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != model.W.shape[1]:
        raise ValueError(f"x must be (n, {model.W.shape[1]}), got {x.shape}")
    return x.astype(np.float64) @ model.W.T + model.b


def evaluate_classification(
    xtr: np.ndarray,
    ytr: np.ndarray,
    xte: np.ndarray,
    yte: np.ndarray,
    metric: str = "map",
    solver: str = "auto",
    C: float = 1.0,
    device: str = "auto",
) -> float:
    """Train on (xtr, ytr), score xte, return the metric as a fraction in [0, 1] (metrics.py's convention).

    xtr (n, d), xte (m, d) float features (already stressed and L2-normalised by the caller, e.g.
    stress.run_grid); ytr (n, C), yte (m, C) int labels in {1, -1, 0}. metric "map": VOC 2007 11-point
    mean AP over classes (difficult test examples ignored); "accuracy": single-label sets, the argmax of
    the scores against the class labelled 1 in each test row.
    """
    _check_metric(metric, yte)
    return classification_metric(decision(train_ovr(xtr, ytr, C=C, solver=solver, device=device), xte), yte, metric)


def _check_metric(metric: str, yte: np.ndarray) -> None:
    if metric not in ("map", "accuracy"):
        raise ConfigError(f"unknown classification metric {metric!r}; use map or accuracy")
    if metric == "accuracy" and not ((np.asarray(yte) == 1).sum(1) == 1).all():
        raise DatasetError("accuracy needs exactly one positive label per test example; use metric map")


def classification_metric(scores: np.ndarray, yte: np.ndarray, metric: str = "map") -> float:
    """scores (m, C) decision values, yte (m, C) labels in {1, -1, 0} -> the metric as a fraction in [0, 1]:
    "map" the VOC 2007 11-point mean AP over classes, "accuracy" the argmax against the class labelled 1."""
    _check_metric(metric, yte)
    yte = np.asarray(yte)
    if metric == "map":
        return voc_map(scores, yte, method="11point")[0]
    return accuracy(scores.argmax(1), yte.argmax(1))
