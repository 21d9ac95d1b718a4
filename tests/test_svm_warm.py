import numpy as np
import pytest

from retr.eval.svm import LinearModel, train_ovr

from tests.test_svm import multilabel, objective_gradient


def test_warm_start_reaches_the_same_optimum():
    x, y = multilabel(4, 400)
    cold = train_ovr(x, y, solver="torch")
    # a neighbouring problem (the features slightly perturbed, as q2 at h - 1 levels) and a bad start (-W)
    x2 = (x + 0.01 * np.random.default_rng(5).normal(size=x.shape)).astype(np.float32)
    near = train_ovr(x2, y, solver="torch")
    bad = LinearModel(W=-10 * cold.W, b=-cold.b)
    for start in (near, bad, cold):
        warm = train_ovr(x, y, solver="torch", warm_start=start)
        np.testing.assert_allclose(warm.W, cold.W, atol=1e-4)
        np.testing.assert_allclose(warm.b, cold.b, atol=1e-4)
        g = objective_gradient(warm, x, y)
        g0 = objective_gradient(LinearModel(np.zeros_like(warm.W), np.zeros_like(warm.b)), x, y)
        assert (np.linalg.norm(g, axis=1) < 1e-4 * np.linalg.norm(g0, axis=1)).all()


def test_warm_start_shape_must_match():
    x, y = multilabel(4, 100)
    with pytest.raises(ValueError, match="warm_start"):
        train_ovr(x, y, solver="torch", warm_start=LinearModel(W=np.zeros((5, 63)), b=np.zeros(5)))


def test_grid_score_function_chains_warm_starts_and_scores_as_cold(monkeypatch):
    """retr eval's classification score function: each training starts from the last one of the same dimension,
    and every point scores as a cold LinearSVC-equivalent solve does."""
    from retr.eval import run
    from retr.eval.datasets import ClassificationDataset
    from retr.eval.svm import classification_metric, decision

    xtr, ytr = multilabel(6, 400)
    xte, yte = multilabel(6, 300)
    ds = ClassificationDataset("toy", [f"c{i}" for i in range(5)], [], ytr, [], yte, "map")
    starts = []
    real = run.train_ovr
    monkeypatch.setattr(run, "train_ovr", lambda *a, **kw: starts.append(kw["warm_start"]) or real(*a, **kw))
    score = run.classification_scores(ds, solver="torch")
    # a chain of neighbouring points (as q1 at h = 2, 3, 4 ...): the features coarsened step by step
    lo, hi = xtr.min(), xtr.max()

    def coarse(x, h):  # h levels over [lo, hi]
        return (np.round((np.clip(x, lo, hi) - lo) / (hi - lo) * (h - 1)) / (h - 1) * (hi - lo) + lo).astype(np.float32)

    for h in (30, 16, 8, 64):
        got = score(coarse(xtr, h), coarse(xte, h))["map"]
        cold = train_ovr(coarse(xtr, h), ytr, solver="torch", tol=1e-8)
        assert got == pytest.approx(100 * classification_metric(decision(cold, coarse(xte, h)), yte), abs=0.05)
    assert starts[0] is None and all(s is not None for s in starts[1:])
    # another dimension starts from 0 (the dimension-64 solution is kept for later 64-dim points)
    score(xtr[:, :32], xte[:, :32])
    assert starts[-1] is None
