"""Tests of retr.eval.svm: hand-solved problems, the objective's optimality, and torch against LIBLINEAR."""

import numpy as np
import pytest

from retr.eval.metrics import voc_map
from retr.eval.svm import LinearModel, decision, evaluate_classification, train_ovr
from retr.retrieval.errors import ConfigError, DatasetError

SOLVERS = ("torch", "sklearn")


def multilabel(seed: int, n: int, d: int = 64, n_cls: int = 5):
    """Nonnegative L2-normalised features (like ReLU CNN outputs) and noisy VOC-style labels with some 0s.

    The labels come from the same latent factors for every call with the same seed, so two calls give a
    train and a test split of one problem.
    """
    shared = np.random.default_rng(seed)
    basis, A = shared.normal(size=(16, d)), shared.normal(size=(16, n_cls))
    rng = np.random.default_rng([seed, n])
    z = rng.normal(size=(n, 16))
    x = np.maximum(z @ basis + rng.normal(size=(n, d)), 0)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    s = z @ A + 2.0 * rng.normal(size=(n, n_cls))
    y = np.where(s > 2.0, 1, -1).astype(np.int8)
    y[(s > 1.6) & (s <= 2.0)] = 0  # "difficult"
    return x.astype(np.float32), y


def objective_gradient(model: LinearModel, x, y, C=1.0):
    """Gradient (C, d+1) of 0.5||[w, b]||^2 + C sum max(0, 1 - y([w, b].[x, 1]))^2 over labels != 0."""
    xa = np.hstack([x.astype(np.float64), np.ones((len(x), 1))])
    wa = np.hstack([model.W, model.b[:, None]])
    r = np.maximum(0, 1 - y * (xa @ wa.T)) * (y != 0)
    return wa - 2 * C * (y * r).T @ xa


@pytest.mark.parametrize("solver", SOLVERS)
def test_symmetric_pair_is_solved_by_hand(solver):
    # x = +-1, y = +-1: by symmetry b = 0 and f(w) = w^2/2 + 2 (1 - w)^2, so f' = w - 4 (1 - w) = 0: w = 4/5
    m = train_ovr(np.array([[1.0], [-1.0]]), np.array([[1], [-1]]), solver=solver)
    assert m.W[0, 0] == pytest.approx(0.8, abs=1e-5)
    assert m.b[0] == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("solver", SOLVERS)
def test_bias_is_regularised_as_liblinear(solver):
    # x = 2 (y = 1) and x = 0 (y = -1), both margins violated at the optimum:
    # f = (w^2 + b^2)/2 + (1 - 2w - b)^2 + (1 + b)^2
    # df/dw = w - 4 (1 - 2w - b) = 0 and df/db = b - 2 (1 - 2w - b) + 2 (1 + b) = 0
    # -> 9w + 4b = 4 and 4w + 5b = 0 -> w = 20/29, b = -16/29 (an unregularised bias would give w = 1, b = -1)
    m = train_ovr(np.array([[2.0], [0.0]]), np.array([[1], [-1]]), solver=solver)
    assert m.W[0, 0] == pytest.approx(20 / 29, abs=1e-5)
    assert m.b[0] == pytest.approx(-16 / 29, abs=1e-5)


@pytest.mark.parametrize("solver", SOLVERS)
def test_solution_is_the_optimum_of_the_l2_loss_objective(solver):
    x, y = multilabel(0, 400)
    m = train_ovr(x, y, solver=solver)
    g = objective_gradient(m, x, y)
    # the gradient at w = 0 is -2C sum y x, of norm ~ n; at the optimum it vanishes
    g0 = objective_gradient(LinearModel(np.zeros_like(m.W), np.zeros_like(m.b)), x, y)
    assert (np.linalg.norm(g, axis=1) < 1e-4 * np.linalg.norm(g0, axis=1)).all()


def test_torch_matches_liblinear_reference_map():
    xtr, ytr = multilabel(1, 400)
    xte, yte = multilabel(1, 401)
    assert (ytr == 0).any() and (yte == 0).any()
    ref = train_ovr(xtr, ytr, solver="sklearn")
    fast = train_ovr(xtr, ytr, solver="torch")
    np.testing.assert_allclose(fast.W, ref.W, atol=1e-3)
    np.testing.assert_allclose(fast.b, ref.b, atol=1e-3)
    map_ref = 100 * voc_map(decision(ref, xte), yte)[0]
    map_fast = 100 * voc_map(decision(fast, xte), yte)[0]
    assert 30 < map_ref < 99  # a real problem, neither hopeless nor trivial
    assert abs(map_fast - map_ref) < 0.1
    assert 100 * evaluate_classification(xtr, ytr, xte, yte, solver="torch") == pytest.approx(map_fast)
    assert 100 * evaluate_classification(xtr, ytr, xte, yte, solver="sklearn") == pytest.approx(map_ref)


@pytest.mark.parametrize("solver", SOLVERS)
def test_difficult_examples_are_left_out_of_training(solver):
    x, y = multilabel(2, 200, n_cls=1)
    y[:20, 0] = 0
    keep = y[:, 0] != 0
    a = train_ovr(x, y, solver=solver)
    b = train_ovr(x[keep], y[keep], solver=solver)
    np.testing.assert_allclose(a.W, b.W, atol=1e-6)
    np.testing.assert_allclose(a.b, b.b, atol=1e-6)


def test_decision_is_affine():
    m = LinearModel(W=np.array([[1.0, 2.0], [0.0, -1.0]]), b=np.array([0.5, 1.0]))
    np.testing.assert_array_equal(decision(m, np.array([[1.0, 1.0], [2.0, 0.0]])), [[3.5, 0.0], [2.5, 1.0]])


def test_accuracy_on_single_label_classes():
    # three well-separated clusters along the axes, one-hot labels in {1, -1}
    rng = np.random.default_rng(3)
    c_tr, c_te = np.arange(60) % 3, np.arange(30) % 3
    xtr = np.eye(3)[c_tr] + 0.05 * rng.normal(size=(60, 3))
    xte = np.eye(3)[c_te] + 0.05 * rng.normal(size=(30, 3))
    onehot = lambda c: np.where(np.eye(3)[c] > 0, 1, -1).astype(np.int8)  # noqa: E731
    acc = evaluate_classification(xtr, onehot(c_tr), xte, onehot(c_te), metric="accuracy")
    assert acc == 1.0
    # flipping the labels of 3 test examples costs exactly 3 / 30
    wrong = c_te.copy()
    wrong[:3] = (wrong[:3] + 1) % 3
    acc = evaluate_classification(xtr, onehot(c_tr), xte, onehot(wrong), metric="accuracy", solver="sklearn")
    assert acc == pytest.approx(0.9)


def test_user_errors():
    x = np.zeros((4, 2), np.float32)
    with pytest.raises(DatasetError, match="class 1"):
        train_ovr(x, np.array([[1, -1], [-1, -1], [1, 0], [-1, -1]]))
    with pytest.raises(ConfigError, match="solver"):
        train_ovr(x, np.array([[1], [-1], [1], [-1]]), solver="libsvm")
    with pytest.raises(ConfigError, match="metric"):
        y = np.array([[1], [-1], [1], [-1]])
        evaluate_classification(x, y, x, y, metric="auc")
    with pytest.raises(ValueError, match="labels"):
        train_ovr(x, np.array([[2], [-1], [1], [-1]]))
