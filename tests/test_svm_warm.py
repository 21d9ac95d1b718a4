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
