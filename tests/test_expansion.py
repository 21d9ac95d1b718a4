"""Query expansion, DBA and diffusion (retrieval/expansion.py): hand-computed expansions on small arrays, the
conjugate gradient against a dense solve, the engine's re-ranking against the same functions on every decoded vector,
and ``retr query --expand``."""

import json

import numpy as np
import pytest

from conftest import indexed_families, run
from retr.indexes.vectors import l2n
from retr.retrieval import engine, expansion
from retr.retrieval.errors import ConfigError

TOL = dict(rtol=1e-5, atol=1e-6)  # float32


def circle(*degrees):
    """Unit vectors of the xy-plane at these angles, (n, 2) float32."""
    a = np.radians(degrees)
    return np.stack([np.cos(a), np.sin(a)], 1).astype(np.float32)


def test_aqe_adds_the_best_two_weighted_by_cosine_cubed():
    xq = np.array([[1.0, 0.0]], np.float32)
    xb = np.array([[0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]], np.float32)
    # best two: [0.6, 0.8] (cosine 0.6, weight 0.6^3 = 0.216) and [0, 1] (cosine 0, weight 0):
    # q' = [1 + 0.216 * 0.6, 0.216 * 0.8] = [1.1296, 0.1728], norm 1.1427406
    want = np.array([[1.1296, 0.1728]]) / 1.1427406
    assert np.allclose(expansion.aqe(xq, xb), want, **TOL)
    assert np.allclose(expansion.aqe(xq, xb, I=np.array([[0, 1, 2]])), want, **TOL)
    # with k = 1 and alpha = 1: q + 0.6 * x0 = [1.36, 0.48], norm 1.4422205
    assert np.allclose(expansion.aqe(xq, xb, k=1, alpha=1), [[1.36 / 1.4422205, 0.48 / 1.4422205]], **TOL)


def test_aqe_gives_no_weight_to_a_negative_cosine():
    xq = np.array([[1.0, 0.0]], np.float32)
    xb = np.array([[-0.6, 0.8], [-1.0, 0.0]], np.float32)  # cosines -0.6 and -1
    assert np.allclose(expansion.aqe(xq, xb), xq, **TOL)


def test_dba_augments_each_vector_with_its_nearest_others():
    xb = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], np.float32)
    # x0: nearest other x1 (0.6): [1, 0] + 0.216 [0.6, 0.8] = [1.1296, 0.1728] / 1.1427406
    # x1: nearest other x2 (0.8): [0.6, 0.8] + 0.512 [0, 1] = [0.6, 1.312] / 1.4426864
    # x2: nearest other x1 (0.8): [0, 1] + 0.512 [0.6, 0.8] = [0.3072, 1.4096] / 1.4426864
    want = np.array([[1.1296 / 1.1427406, 0.1728 / 1.1427406], [0.6 / 1.4426864, 1.312 / 1.4426864],
                     [0.3072 / 1.4426864, 1.4096 / 1.4426864]])
    assert np.allclose(expansion.dba(xb, k=1), want, **TOL)
    # k = 2 adds x0's second neighbour x2 (cosine 0, weight 0), x1's x0 (0.216), x2's x0 (0)
    want2 = want.copy()
    want2[1] = l2n(np.array([[0.6 + 0.216, 0.8 + 0.512]]))[0]
    assert np.allclose(expansion.dba(xb, k=2), want2, **TOL)
    assert np.allclose(expansion.dba(xb, I=np.array([[1], [2], [1]]), k=1), want, **TOL)


def test_knn_affinity_keeps_mutual_neighbours_only():
    xb = circle(0, 20, 60, 180)
    c20, c40, c60 = np.cos(np.radians([20, 40, 60]))
    # 1-NN: 0 -> 1, 1 -> 0, 2 -> 1, 3 -> 2 (cosine -0.5 is its best): only 0 and 1 are mutual
    W = expansion.knn_affinity(xb, k=1, gamma=3).toarray()
    want = np.zeros((4, 4))
    want[0, 1] = want[1, 0] = c20 ** 3
    assert np.allclose(W, want, **TOL)
    # 2-NN: 0 -> {1, 2}, 1 -> {0, 2}, 2 -> {1, 0}, 3 -> {2, 1}: 3 is nobody's neighbour, so it stays isolated
    W = expansion.knn_affinity(xb, k=2, gamma=1).toarray()
    want = np.array([[0, c20, c60, 0], [c20, 0, c40, 0], [c60, c40, 0, 0], [0, 0, 0, 0]])
    assert np.allclose(W, want, **TOL)


def dense_reference(W, y, alpha):
    """(I - alpha S)^-1 y with S = D^-1/2 W D^-1/2 (zero rows for isolated vertices), by numpy.linalg.solve."""
    W = np.asarray(W, np.float64)
    d = W.sum(1)
    dinv = np.where(d > 0, 1 / np.sqrt(np.where(d > 0, d, 1)), 0)
    S = dinv[:, None] * W * dinv[None, :]
    return np.linalg.solve(np.eye(len(W)) - alpha * S, y)


def test_conjugate_gradient_matches_a_dense_solve():
    rng = np.random.default_rng(0)
    xb = l2n(rng.standard_normal((15, 4)))
    W = expansion.knn_affinity(xb, k=4, gamma=3)
    assert (W != W.T).nnz == 0 and W.diagonal().sum() == 0
    y = np.maximum(rng.standard_normal((15, 3)), 0)
    for alpha in (0.5, 0.9, 0.99):
        f = expansion.diffuse(W, y, alpha, tol=1e-12, maxiter=500)
        assert np.allclose(f, dense_reference(W.toarray(), y, alpha), rtol=1e-6, atol=1e-9)
    # one right-hand side as a vector, and an isolated vertex (zero row of S): f = y there
    W4 = expansion.knn_affinity(circle(0, 20, 60, 180), k=2, gamma=1)
    y4 = np.array([1.0, 0.0, 0.0, 0.5])
    f4 = expansion.diffuse(W4, y4, 0.9, tol=1e-12, maxiter=100)
    assert f4.shape == (4,) and np.allclose(f4, dense_reference(W4.toarray(), y4, 0.9), rtol=1e-6, atol=1e-9)
    assert f4[3] == pytest.approx(0.5)
    # Iscen et al.'s 20 iterations at tolerance 1e-6 stop early, close to the solution
    f = expansion.diffuse(W, y, 0.99)
    ref = dense_reference(W.toarray(), y, 0.99)
    assert np.linalg.norm(f - ref) < 0.05 * np.linalg.norm(ref)


def test_diffusion_follows_the_manifold():
    # a chain of points along the equator every 10 degrees, and one point 25 degrees along it but 50 degrees up
    a = np.radians(np.arange(0, 100, 10))
    chain = np.stack([np.cos(a), np.sin(a), np.zeros_like(a)], 1)
    off = np.array([[np.cos(np.radians(25)) * np.cos(np.radians(50)), np.sin(np.radians(25)) * np.cos(np.radians(50)),
                     np.sin(np.radians(50))]])
    xb = np.vstack([chain, off]).astype(np.float32)
    xq = np.array([[1.0, 0.0, 0.0]], np.float32)
    # by cosine the off-chain point (0.58) beats the chain's far end (cosine 0); diffusion from the query's best
    # (kq = 1) along the mutual 2-NN graph reaches the whole chain and never the off-chain point (nobody's neighbour)
    assert (xq @ xb.T)[0, 10] > (xq @ xb.T)[0, 9]
    f = expansion.diffusion(xq, xb, k=2, kq=1, alpha=0.99, tol=1e-12, maxiter=500)[0]
    assert f[10] == 0 and (f[:10] > 0).all()
    assert set(np.argsort(-f, kind="stable")[:10]) == set(range(10))


def flat(xb, offset=100):
    """An exact search and a vector look-up over xb whose ids are positions + offset (as store ids)."""
    def search(x, k):
        s = np.asarray(x, np.float32) @ xb.T
        I = np.argsort(-s, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(s, I, 1), I + offset

    def vectors(ids):
        return xb[np.asarray(ids) - offset]
    return search, vectors


def test_expanded_search_equals_the_functions_on_the_whole_database():
    rng = np.random.default_rng(1)
    xb = l2n(rng.standard_normal((40, 8)) + 2 * np.repeat(rng.standard_normal((8, 8)), 5, axis=0))
    xq = l2n(xb[[0, 13, 27]] + 0.3 * rng.standard_normal((3, 8)))
    search, vectors = flat(xb)
    k = 7
    D, I = expansion.expanded_search(xq, k, "none", search, vectors)
    assert np.array_equal(I, search(xq, k)[1])
    D, I = expansion.expanded_search(xq, k, "aqe", search, vectors)
    D2, I2 = search(expansion.aqe(xq, xb), k)
    assert np.array_equal(I, I2) and np.allclose(D, D2, **TOL)
    # DBA: 40 vectors < the shortlist of 100, so every vector is re-ranked with its augmented version
    D, I = expansion.expanded_search(xq, k, "dba", search, vectors)
    s = xq @ expansion.dba(xb).T
    assert np.array_equal(I, np.argsort(-s, axis=1, kind="stable")[:, :k] + 100)
    assert np.allclose(D, -np.sort(-s, axis=1)[:, :k], **TOL)
    # diffusion: 40 < the truncation of 1000, so the graph is the whole database's
    D, I = expansion.expanded_search(xq, k, "diffusion", search, vectors)
    f = expansion.diffusion(xq, xb)
    assert np.array_equal(I, np.argsort(-f, axis=1, kind="stable")[:, :k] + 100)
    assert np.allclose(D, -np.sort(-f, axis=1)[:, :k], rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="--expand"):
        expansion.expanded_search(xq, k, "qe", search, vectors)


def test_expanded_search_pads_a_small_database():
    xb = circle(0, 30)
    search, vectors = flat(xb)
    for method in ("aqe", "dba", "diffusion"):
        D, I = expansion.expanded_search(circle(10), 5, method, search, vectors)
        assert sorted(i for i in I[0] if i >= 0) == [100, 101], method


@pytest.fixture(scope="module")
def db(tmp_path_factory, one_torch_thread):
    return indexed_families(tmp_path_factory.mktemp("expansion"))


def test_engine_expansion_equals_the_functions_on_the_decoded_vectors(db):
    _, d = db
    rng = np.random.default_rng(2)
    with engine.Engine(d, device="cpu") as eng:
        ids = np.array(sorted(i for i, _ in eng.store.files().values()))
        xb = eng.vectors(ids)
        assert xb.shape == (21, eng.params.dims)
        x = rng.standard_normal((2, eng.spec.encoder.dim)).astype(np.float32)
        xq = eng.query_vectors(x)
        n = len(ids)
        D0, I0 = eng.search_vectors(x, k=n)
        assert np.array_equal(I0, eng.search_vectors(x, k=n, expand="none")[1])
        D, I = eng.search_vectors(x, k=n, expand="aqe")
        s = expansion.aqe(xq, xb, I=np.searchsorted(ids, I0)) @ xb.T
        assert np.allclose(D, -np.sort(-s, axis=1), **TOL)
        D, I = eng.search_vectors(x, k=5, expand="dba")
        s = xq @ expansion.dba(xb).T
        assert np.allclose(D, -np.sort(-s, axis=1)[:, :5], **TOL)
        D, I = eng.search_vectors(x, k=5, expand="diffusion")
        f = expansion.diffusion(xq, xb)
        assert np.allclose(D, -np.sort(-f, axis=1)[:, :5], rtol=1e-4, atol=1e-6)


def test_query_expand_cli(db):
    root, d = db
    q = root / "photos" / "f01" / "crop.png"
    for method in ("aqe", "dba", "diffusion"):
        r = run("query", q, "--db", d, "-k", 3, "--expand", method, "--device", "cpu", "--json")
        assert r.exit_code == 0, r.output
        res = json.loads(r.output)[0]["results"]
        assert [m["rank"] for m in res] == [1, 2, 3]
        assert all(m["path"].startswith(str(root / "photos")) for m in res)
    r = run("query", q, "--db", d, "--expand", "qe")
    assert r.exit_code == 2 and "qe" in r.output
    r = run("query", q, "--db", d, "--db", d, "--expand", "aqe")
    assert r.exit_code == 2 and "one --db" in r.output
    with pytest.raises(ConfigError, match="--expand"):
        engine.search(d, [str(q)], expand="bogus")
