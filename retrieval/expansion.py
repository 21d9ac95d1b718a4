"""Query expansion, database-side augmentation and diffusion over the database's decoded vectors (``retr query
--expand``).

Pure functions on arrays; every row is an L2-normalised vector, so an inner product is a cosine:

    augment(x, xn, alpha)            x and its neighbours xn, weighted by (cosine with x)^alpha, L2-normalised
    aqe(xq, xb, I, k=2, alpha=3)     alpha-query expansion: each query plus its k best database vectors
                                     (Radenović, Tolias, Chum, TPAMI 2018; cirtorch: alpha = 3, k = 2)
    dba(xb, I, k=2, alpha=3)         database-side augmentation: the same on every database vector, with its k
                                     nearest other database vectors
    knn_affinity(xb, k, gamma)       the mutual k-NN graph W of Iscen et al. (CVPR 2017): w_ij = max(0, x_i.x_j)^gamma
                                     when each of i, j is among the k nearest of the other, 0 otherwise
    diffuse(W, y, alpha)             f = (I - alpha S)^-1 y, S = D^-1/2 W D^-1/2, by conjugate gradient
    diffusion(xq, xb, ...)           the diffusion scores of queries: y_i = max(0, q.x_i)^gamma over the kq nearest

and `expanded_search`, the glue the engine calls with its own search and decoded vectors. Iscen et al.'s defaults
(their public code): graph k = 50, query kq = 10, gamma = 3, alpha = 0.99, CG tolerance 1e-6 and 20 iterations, the
diffusion truncated to each query's 1,000 best.

Legend: m queries, n database vectors, p dimensions; xq (m, p), xb (n, p) float32; I (·, k) int64 positions of
neighbours in xb (best first); W (n, n) scipy sparse, symmetric, zero diagonal; y, f (n,) or (n, m) float64.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..indexes.vectors import l2n
from .errors import ConfigError

METHODS = ("none", "aqe", "dba", "diffusion")
AQE_K, AQE_ALPHA = 2, 3.0  # cirtorch's alpha-QE
DBA_K, DBA_ALPHA = 2, 3.0  # the same weighting on the database side
DBA_SHORTLIST = 100  # candidates of the plain search that `expanded_search` re-ranks with their augmented vectors
# Iscen et al., CVPR 2017 (their public code's defaults)
DIFFUSION_K, DIFFUSION_KQ, DIFFUSION_GAMMA, DIFFUSION_ALPHA = 50, 10, 3.0, 0.99
DIFFUSION_TOL, DIFFUSION_MAXITER, DIFFUSION_TRUNCATION = 1e-6, 20, 1000


def check_method(method: str) -> None:
    """A ``--expand`` value is a user's option: refuse an unknown one in one line."""
    if method not in METHODS:
        raise ConfigError(f"unknown --expand {method!r}; choose one of {', '.join(METHODS)}")


def augment(x: np.ndarray, xn: np.ndarray, alpha: float) -> np.ndarray:
    """``x (r, p)`` each plus its neighbours ``xn (r, k, p)`` weighted by ``max(0, x.xn)^alpha`` (x itself weighs
    1 = its own cosine^alpha), L2-normalised: ``(r, p) float32``. A negative cosine weighs 0: raised to an odd
    power it would push the vector away from that neighbour (the top neighbours of a real query are positive)."""
    x = np.asarray(x, np.float64)
    xn = np.asarray(xn, np.float64)
    w = np.maximum(np.einsum("rp,rkp->rk", x, xn), 0.0) ** alpha
    return l2n(x + np.einsum("rk,rkp->rp", w, xn))


def _top(s: np.ndarray, k: int) -> np.ndarray:
    """Columns of the k largest entries of each row of ``s (r, n)``, best first, ties in column order."""
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


def aqe(xq: np.ndarray, xb: np.ndarray, I: np.ndarray | None = None, k: int = AQE_K,
        alpha: float = AQE_ALPHA) -> np.ndarray:
    """alpha-QE: each query ``xq (m, p)`` plus its ``k`` best database vectors ``xb[I[:, :k]]`` weighted by their
    cosine^alpha, L2-normalised: ``(m, p) float32``, to search again. ``I (m, >= k)``: the queries' neighbours
    (positions in xb, best first); None ranks all of xb."""
    xq, xb = np.asarray(xq, np.float32), np.asarray(xb, np.float32)
    I = _top(xq @ xb.T, k) if I is None else np.asarray(I)[:, :k]
    return augment(xq, xb[I], alpha)


def dba(xb: np.ndarray, I: np.ndarray | None = None, k: int = DBA_K, alpha: float = DBA_ALPHA) -> np.ndarray:
    """Database-side augmentation: every vector of ``xb (n, p)`` plus its ``k`` nearest *other* vectors weighted by
    cosine^alpha, L2-normalised: ``(n, p) float32``. ``I (n, >= k)``: those neighbours (positions in xb, itself
    left out); None ranks all of xb."""
    xb = np.asarray(xb, np.float32)
    if I is None:
        s = xb @ xb.T
        np.fill_diagonal(s, -np.inf)
        I = _top(s, k)
    return augment(xb, xb[np.asarray(I)[:, :k]], alpha)


def knn_affinity(xb: np.ndarray, k: int = DIFFUSION_K, gamma: float = DIFFUSION_GAMMA):
    """The mutual k-NN graph of ``xb (n, p)``: a symmetric ``(n, n)`` scipy CSR matrix with ``w_ij = max(0,
    x_i.x_j)^gamma`` where j is among the k nearest other vectors of i and i among those of j, 0 elsewhere and on
    the diagonal (Iscen et al.'s affinity; the nearest are found by exact cosine, ties in position order)."""
    from scipy import sparse

    xb = np.asarray(xb, np.float64)
    n = len(xb)
    k = min(k, n - 1)
    if k < 1:
        return sparse.csr_matrix((n, n))
    s = xb @ xb.T
    np.fill_diagonal(s, -np.inf)
    J = _top(s, k)
    rows = np.repeat(np.arange(n), k)
    vals = np.maximum(np.take_along_axis(s, J, 1).ravel(), 0.0) ** gamma
    A = sparse.csr_matrix((vals, (rows, J.ravel())), shape=(n, n))
    W = A.minimum(A.T)  # an edge that only one side has becomes min(w, 0) = 0: mutual neighbours only
    W.eliminate_zeros()
    return W.tocsr()


def normalized(W):
    """``S = D^-1/2 W D^-1/2`` with D the degrees (row sums) of ``W``; an isolated vertex keeps a zero row."""
    from scipy import sparse

    d = np.asarray(W.sum(axis=1)).ravel()
    dinv = np.where(d > 0, 1.0 / np.sqrt(np.where(d > 0, d, 1.0)), 0.0)
    Dm = sparse.diags(dinv)
    return (Dm @ W @ Dm).tocsr()


def diffuse(W, y: np.ndarray, alpha: float = DIFFUSION_ALPHA, tol: float = DIFFUSION_TOL,
            maxiter: int = DIFFUSION_MAXITER) -> np.ndarray:
    """Solve ``(I - alpha S) f = y`` by conjugate gradient, S = `normalized` (W), each column of ``y (n,)`` or
    ``(n, m)`` on its own, from f = 0, until ``||y - (I - alpha S) f|| <= tol ||y||`` or ``maxiter`` iterations (as
    scipy's ``cg`` in Iscen et al.'s code). ``0 <= alpha < 1`` keeps the system positive definite. Returns f, float64,
    shaped as y."""
    if not 0 <= alpha < 1:
        raise ValueError(f"alpha must be in [0, 1), got {alpha}")
    S = normalized(W)
    y = np.asarray(y, np.float64)
    b = y.reshape(len(y), -1)
    f = np.zeros_like(b)
    r = b.copy()
    p = r.copy()
    rs = (r * r).sum(axis=0)
    limit = (tol * np.linalg.norm(b, axis=0)) ** 2
    for _ in range(maxiter):
        active = rs > limit
        if not active.any():
            break
        Ap = p - alpha * (S @ p)
        pAp = (p * Ap).sum(axis=0)
        a = np.where(active, rs / np.where(active, pAp, 1.0), 0.0)
        f += a * p
        r -= a * Ap
        rs_new = (r * r).sum(axis=0)
        beta = np.where(active, rs_new / np.where(active, rs, 1.0), 0.0)
        p = r + beta * p
        rs = rs_new
    return f.reshape(y.shape)


def query_vector(s: np.ndarray, kq: int = DIFFUSION_KQ, gamma: float = DIFFUSION_GAMMA) -> np.ndarray:
    """The diffusion's start ``y (n, m) float64`` from the cosines ``s (m, n)`` of m queries with the database:
    ``max(0, s)^gamma`` at each query's ``kq`` best, 0 elsewhere."""
    s = np.asarray(s, np.float64)
    J = _top(s, min(kq, s.shape[1]))
    y = np.zeros_like(s)
    np.put_along_axis(y, J, np.maximum(np.take_along_axis(s, J, 1), 0.0) ** gamma, 1)
    return y.T


def diffusion(xq: np.ndarray, xb: np.ndarray, k: int = DIFFUSION_K, kq: int = DIFFUSION_KQ,
              gamma: float = DIFFUSION_GAMMA, alpha: float = DIFFUSION_ALPHA, tol: float = DIFFUSION_TOL,
              maxiter: int = DIFFUSION_MAXITER) -> np.ndarray:
    """Diffusion scores ``f (m, n) float64`` of queries ``xq (m, p)`` over ``xb (n, p)``: `diffuse` on the
    `knn_affinity` graph of xb from `query_vector`; rank by decreasing f."""
    xq, xb = np.asarray(xq, np.float32), np.asarray(xb, np.float32)
    W = knn_affinity(xb, k, gamma)
    return diffuse(W, query_vector(xq @ xb.T, kq, gamma), alpha, tol, maxiter).T


Search = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]
Vectors = Callable[[np.ndarray], np.ndarray]


def expanded_search(xq: np.ndarray, k: int, method: str, search: Search, vectors: Vectors) -> tuple[np.ndarray,
                                                                                                      np.ndarray]:
    """The engine's search with ``method`` (one of METHODS): ``D (m, k) float32``, ``I (m, k) int64`` ids (-inf and
    -1 where fewer than k are found).

    ``search(x (r, p), k) -> (D, I)`` searches the database's index; ``vectors(ids (r,)) -> (r, p)`` are the stored
    vectors as their codes decode them, L2-normalised.

    - ``aqe``: search with `aqe` of each query over its ``AQE_K`` best; scores are cosines with the expanded query.
    - ``dba``: the plain search's best ``max(k, DBA_SHORTLIST)`` re-ranked by their cosine with the query once each
      is augmented (`augment`) with its ``DBA_K`` nearest other stored vectors (found by ``search``): for those
      candidates, exactly the ranking a fully augmented database gives.
    - ``diffusion``: truncated diffusion (Iscen et al.): the plain search's best ``R = max(k,
      DIFFUSION_TRUNCATION)``, their mutual k-NN graph (k = min(DIFFUSION_K, R - 1), built among those R), `diffuse`
      from the query's ``DIFFUSION_KQ`` best; scores are the diffusion's f, not cosines.
    """
    check_method(method)
    xq = np.asarray(xq, np.float32)
    if method == "none":
        return search(xq, k)
    if method == "aqe":
        _, I0 = search(xq, AQE_K)
        xn = _gather(vectors, I0, xq.shape[1])  # zeros (weight 0) past the end of a database smaller than AQE_K
        return search(augment(xq, xn, AQE_ALPHA), k)
    m = len(xq)
    D = np.full((m, k), -np.inf, np.float32)
    I = np.full((m, k), -1, np.int64)
    R = max(k, DBA_SHORTLIST if method == "dba" else DIFFUSION_TRUNCATION)
    _, C = search(xq, R)
    for j in range(m):
        cand = C[j][C[j] >= 0]
        if not len(cand):
            continue
        xc = vectors(cand)
        if method == "dba":
            _, In = search(xc, DBA_K + 1)
            other = (In >= 0) & (In != cand[:, None])  # its nearest, itself left out
            first = np.argsort(~other, axis=1, kind="stable")[:, :DBA_K]
            rows = np.arange(len(cand))[:, None]
            xn = _gather(vectors, np.where(other[rows, first], In[rows, first], -1), xq.shape[1])
            s = augment(xc, xn, DBA_ALPHA) @ xq[j]
        else:
            W = knn_affinity(xc, DIFFUSION_K, DIFFUSION_GAMMA)
            y = query_vector((xc @ xq[j])[None, :], DIFFUSION_KQ, DIFFUSION_GAMMA)[:, 0]
            s = diffuse(W, y, DIFFUSION_ALPHA, DIFFUSION_TOL, DIFFUSION_MAXITER)
        order = np.argsort(-s, kind="stable")[:k]  # ties keep the plain search's order
        D[j, : len(order)] = s[order]
        I[j, : len(order)] = cand[order]
    return D, I


def _gather(vectors: Vectors, I: np.ndarray, p: int) -> np.ndarray:
    """``vectors`` of the ids ``I (r, k)`` as ``(r, k, p) float32``, each id decoded once; zeros where I is -1."""
    out = np.zeros(I.shape + (p,), np.float32)
    ok = I >= 0
    if ok.any():
        u, inv = np.unique(I[ok], return_inverse=True)
        out[ok] = vectors(u)[inv]
    return out


__all__ = ["METHODS", "aqe", "augment", "check_method", "dba", "diffuse", "diffusion", "expanded_search",
           "knn_affinity", "normalized", "query_vector"]
