"""One-vs-rest linear SVMs, as in the paper: LIBLINEAR's L2-regularised L2-loss SVM with C = 1.

Each class c gets its own binary problem over the training examples whose label is not 0:

    min_w  0.5 ||w||^2 + C sum_i max(0, 1 - y_i w . [x_i, 1])^2          w = [W_c, b_c]

The bias is LIBLINEAR's: a constant feature 1 appended to every x, its weight regularised like the others
(scikit-learn's LinearSVC with intercept_scaling=1 does the same). Two solvers reach that optimum:

- "sklearn": LinearSVC (which is LIBLINEAR), one class at a time. The reference.
- "torch": all classes at once by a truncated Newton method, as LIBLINEAR's primal solver: conjugate
  gradients on Hessian-vector products (float32) with a diagonal + rank-one preconditioner, then an Armijo
  line search, until the float64 gradient norm falls below `tol` times its initial value. Its objective
  ends at or below LinearSVC's; tests/test_svm.py checks the optimum by hand and the mAP against the
  reference (within 0.1 point). It is the default ("auto"): on 2 CPU cores, for a VOC 2007-sized problem
  (5011 x 4096, 20 classes) it takes about 20 s against LinearSVC's 45 s when under half of the features
  are zero (PCA-reduced and quantized features are dense), 21 s against 18 s at 74% zeros (raw ReLU
  features, which LIBLINEAR's sparse format exploits). The same code runs on a CUDA device.

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
) -> LinearModel:
    """Train one L2-loss linear SVM per class (module doc).

    x: (n, d) float features (the paper L2-normalises them first; this function takes them as they are);
    y: (n, C) int labels in {1, -1, 0}, 0 = left out of that class's training; C: regularisation constant;
    solver: "torch" (batched Newton), "sklearn" (LinearSVC, CPU) or "auto" (DEFAULT_SOLVER); device: the
    torch solver's device, "auto" = CUDA when available, else CPU; tol: the torch solver's relative
    gradient-norm tolerance. Raises DatasetError when a class lacks positives or negatives.
    """
    if solver not in SOLVERS:
        raise ConfigError(f"unknown SVM solver {solver!r}; use one of {', '.join(SOLVERS)}")
    if not C > 0:
        raise ConfigError(f"the SVM constant C must be positive, not {C!r}")
    x, y = _check(x, y)
    if (DEFAULT_SOLVER if solver == "auto" else solver) == "sklearn":
        return _train_sklearn(x, y, C)
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return _train_torch(x, y, C, device, tol)


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


def _train_torch(x: np.ndarray, y: np.ndarray, cost: float, device: str, tol: float) -> LinearModel:
    import torch

    dev = torch.device(device)
    f64, f32 = torch.float64, torch.float32
    n, d = x.shape
    # the bias as a constant feature 1 (LIBLINEAR's bias handling: its weight is regularised)
    X = torch.ones((n, d + 1), dtype=f64, device=dev)
    X[:, :d] = torch.as_tensor(np.asarray(x), device=dev).to(f64)
    # The search direction (conjugate gradients on Hessian-vector products) only steers: float32 and a
    # transposed copy (a contiguous matmul) make it about 3x faster. Gradients and objectives stay float64.
    X32 = X.to(f32)
    Xt32 = X32.T.contiguous()
    X2 = X32 * X32
    Y = torch.as_tensor(y.astype(np.float64), device=dev)  # (n, C), 0 = left out
    W = torch.zeros((y.shape[1], d + 1), dtype=f64, device=dev)
    two_c = 2.0 * cost

    def state(W: torch.Tensor, Z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Objective (C,), gradient (C, d+1) and hinge residuals r = max(0, 1 - y z) (n, C), 0 if left out."""
        r = torch.clamp(1.0 - Y * Z, min=0.0) * (Y != 0)
        return 0.5 * (W * W).sum(1) + cost * (r * r).sum(0), W - two_c * (Y * r).T @ X, r

    Z = X @ W.T
    f, G, r = state(W, Z)
    g0 = G.norm(dim=1)
    stalled = torch.zeros_like(g0, dtype=torch.bool)  # no decrease found along the step: float64's limit
    for _ in range(200):
        todo = (G.norm(dim=1) > tol * g0) & ~stalled
        if not todo.any():
            break
        A = (r > 0).to(f32)  # (n, C) active examples: the generalised Hessian is I + 2C X_A^T X_A
        na = A.sum(0)[:, None]
        mu = (A.T @ X32) / na.clamp(min=1.0)
        # Preconditioner: the Hessian's diagonal, with the active examples' mean direction as a rank-one
        # term (nonnegative CNN features share a large mean, the Hessian's stiffest direction)
        diag = 1.0 + two_c * (A.T @ X2 - na * mu * mu)
        u = (two_c * na).sqrt() * mu

        def hess(V: torch.Tensor) -> torch.Tensor:
            return V + two_c * (A.T * (V @ Xt32)) @ X32

        S = _pcg(hess, -G.to(f32), _rank_one_inverse(diag, u), tol_rel=0.1, todo=todo).to(f64)
        Zs = X @ S.T
        gs = (G * S).sum(1)
        ww, ws, ss = (W * W).sum(1), (W * S).sum(1), (S * S).sum(1)
        t = todo.to(f64)
        # Armijo backtracking, per class; the objective along S is cheap given Zs
        for _halving in range(40):
            rt = torch.clamp(1.0 - Y * (Z + t * Zs), min=0.0) * (Y != 0)
            ft = 0.5 * (ww + 2 * t * ws + t * t * ss) + cost * (rt * rt).sum(0)
            ok = ft <= f + 1e-4 * t * gs
            if ok.all():
                break
            t = torch.where(ok, t, 0.5 * t)
        stalled |= ~ok
        t = torch.where(ok, t, torch.zeros_like(t))
        W = W + t[:, None] * S
        Z = Z + t * Zs
        f, G, r = state(W, Z)
    Wn = W.cpu().numpy()
    return LinearModel(W=Wn[:, :d].copy(), b=Wn[:, d].copy())


def _rank_one_inverse(diag, u):
    """R -> M^-1 R row-wise for M_c = Diag(diag_c) + u_c u_c^T (Sherman-Morrison). diag, u: (C, d)."""
    du = u / diag
    den = 1.0 + (u * du).sum(1, keepdim=True)

    def apply(R):
        return R / diag - du * ((du * R).sum(1, keepdim=True) / den)

    return apply


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
    if metric not in ("map", "accuracy"):
        raise ConfigError(f"unknown classification metric {metric!r}; use map or accuracy")
    yte = np.asarray(yte)
    if metric == "accuracy" and not ((yte == 1).sum(1) == 1).all():
        raise DatasetError("accuracy needs exactly one positive label per test example; use metric map")
    scores = decision(train_ovr(xtr, ytr, C=C, solver=solver, device=device), xte)
    if metric == "map":
        return voc_map(scores, yte, method="11point")[0]
    return accuracy(scores.argmax(1), yte.argmax(1))
