"""Classifier maths against scikit-learn: exact optima, losses, metrics and smoothness."""

from __future__ import annotations

import inspect
import json
from typing import Any, Optional

import numpy as np
import pytest
from scipy.special import expit, softmax
from sklearn import metrics
from sklearn.datasets import load_breast_cancer, load_iris, load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.utils.class_weight import compute_class_weight

from gdflow.config.errors import GdflowError
from gdflow.training.classification import (
    binary_log_loss,
    binary_metrics,
    class_weights,
    multiclass_log_loss,
    multiclass_metrics,
    smoothness,
)
from gdflow.training.conditioning import hessian_eigenvalues
from gdflow.training.optima import logistic_loss, logistic_optimum, softmax_optimum

BREAST = load_breast_cancer()
IRIS = load_iris()
WINE = load_wine()
# With all their columns breast cancer and wine are linearly separable and iris is
# quasi-separable (setosa), so no finite optimum exists there; these subsets overlap.
BREAST_MEANS = BREAST.data[:, :10]  # the ten "mean ..." columns
IRIS_SEPAL_LENGTH = IRIS.data[:, :1]
WINE_FIRST_FIVE = WINE.data[:, :5]


def _standardized(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(axis=0)) / x.std(axis=0)


def _design(x: np.ndarray) -> np.ndarray:
    return np.hstack([x, np.ones((len(x), 1))])


def _sk_log_loss(y: np.ndarray, prob: np.ndarray, **kwargs: Any) -> float:
    """sklearn's log_loss; its probabilities are `y_proba` from 1.9 on."""
    if "y_proba" in inspect.signature(metrics.log_loss).parameters:
        return float(metrics.log_loss(y, y_proba=prob, **kwargs))
    return float(metrics.log_loss(y, prob, **kwargs))


def _sklearn_optimum_loss(x: np.ndarray, y: np.ndarray, class_weight: Optional[str]) -> float:
    """Weighted mean log loss sum w_i l_i / n of scikit-learn's unpenalised fit."""
    model = LogisticRegression(C=np.inf, max_iter=100_000, tol=1e-14, class_weight=class_weight)
    model.fit(x, y)
    weights = class_weights(y, len(np.unique(y)), class_weight)
    assert weights.sum() == pytest.approx(len(y))  # so sklearn's sum w l / sum w is sum w l / n
    return _sk_log_loss(y, model.predict_proba(x), sample_weight=weights)


@pytest.mark.parametrize("mode", [None, "balanced"])
def test_logistic_optimum_matches_sklearn(mode: Optional[str]) -> None:
    x, y = BREAST_MEANS, BREAST.target
    z = _standardized(x)
    weights = class_weights(y, 2, mode)
    ours = logistic_optimum(z, y, bias=True, weights=weights)
    assert ours.reason == "" and ours.theta is not None and ours.loss is not None
    assert ours.loss == pytest.approx(_sklearn_optimum_loss(z, y, mode), rel=1e-6)
    # The optimum has zero gradient; nudging it raises the loss.
    grad = _design(z).T @ (weights * (expit(_design(z) @ ours.theta) - y)) / len(y)
    assert np.linalg.norm(grad) < 1e-10
    nudged = ours.theta + 1e-3 * np.eye(len(ours.theta))[0]
    assert logistic_loss(z, y, nudged, bias=True, weights=weights) > ours.loss + 1e-9
    # An affine rescaling of the columns, absorbed by the bias, leaves the optimal loss alone.
    raw = logistic_optimum(x, y, bias=True, weights=weights)
    assert raw.loss == pytest.approx(ours.loss, rel=1e-6)
    assert logistic_loss(x, y, raw.theta, bias=True, weights=weights) == raw.loss


@pytest.mark.parametrize(
    ("x", "y", "mode"),
    [
        (IRIS_SEPAL_LENGTH, IRIS.target, None),
        (WINE_FIRST_FIVE, WINE.target, None),
        (WINE_FIRST_FIVE, WINE.target, "balanced"),
    ],
    ids=["iris-sepal-length", "wine", "wine-balanced"],
)
def test_softmax_optimum_matches_sklearn(x: np.ndarray, y: np.ndarray, mode: Optional[str]) -> None:
    z = _standardized(x)
    weights = class_weights(y, 3, mode)
    ours = softmax_optimum(z, y, 3, bias=True, weights=weights)
    assert ours.reason == "" and ours.theta is not None and ours.loss is not None
    assert ours.theta.shape == (x.shape[1] + 1, 3) and not ours.theta[:, 0].any()
    assert ours.loss == pytest.approx(_sklearn_optimum_loss(z, y, mode), rel=1e-6)
    logits = _design(z) @ ours.theta
    assert ours.loss == pytest.approx(multiclass_log_loss(logits, y, weights), rel=1e-14)
    grad = _design(z).T @ (weights[:, None] * (softmax(logits, axis=1) - np.eye(3)[y])) / len(y)
    assert np.linalg.norm(grad) < 1e-10
    raw = softmax_optimum(x, y, 3, bias=True, weights=weights)
    assert raw.loss == pytest.approx(ours.loss, rel=1e-6)


def test_an_overlapping_tiny_set_has_a_finite_optimum() -> None:
    x, y = np.array([[0.0], [1.0], [2.0], [3.0]]), np.array([0, 1, 0, 1])
    optimum = logistic_optimum(x, y, bias=True)
    assert optimum.theta is not None and optimum.loss is not None
    assert 0 < optimum.loss < np.log(2)  # better than the constant 1/2


@pytest.mark.parametrize(
    ("x", "y"),
    [
        (IRIS.data[:, 2:3], (IRIS.target == 0).astype(int)),  # setosa vs rest, petal length
        (BREAST.data, BREAST.target),
        (np.array([[0.0], [1.0], [2.0], [3.0]]), np.array([0, 0, 1, 1])),
    ],
    ids=["iris-setosa", "breast-cancer-all", "tiny"],
)
def test_separable_classes_have_no_optimum(x: np.ndarray, y: np.ndarray) -> None:
    for weights in (None, class_weights(y, 2, "balanced")):
        optimum = logistic_optimum(x, y, bias=True, weights=weights)
        assert optimum.theta is None and optimum.loss is None
        assert optimum.reason.startswith("the classes are linearly separable")


def test_quasi_separable_classes_have_no_optimum() -> None:
    tiny = logistic_optimum(np.array([0.0, 0.0, 1.0, 2.0]), np.array([0, 1, 1, 1]), bias=True)
    assert tiny.theta is None and tiny.reason.startswith("the classes are quasi-separable")
    # Setosa is separable from the rest, so the multinomial loss on all of iris is unbounded.
    iris = softmax_optimum(IRIS.data, IRIS.target, 3, bias=True)
    assert iris.theta is None and iris.reason.startswith("the classes are quasi-separable")


def test_missing_classes_and_too_many_parameters() -> None:
    x = np.array([[0.0], [1.0], [2.0], [3.0]])
    one = logistic_optimum(x, np.ones(4, dtype=int), bias=True)
    assert one.theta is None and one.reason.startswith("only one class occurs")
    absent = softmax_optimum(x, np.array([0, 1, 0, 1]), 3, bias=True)
    assert absent.theta is None and absent.reason.startswith("class(es) 2 never occur")
    big = softmax_optimum(np.zeros((5, 1000)), np.arange(5) % 4, 4, bias=True)
    assert big.theta is None and big.reason.startswith("too many parameters")


def test_class_weights_are_sklearns_balanced_weights() -> None:
    y = WINE.target
    per_class = compute_class_weight("balanced", classes=np.arange(3), y=y)
    np.testing.assert_allclose(class_weights(y, 3, "balanced"), per_class[y], rtol=1e-15)
    np.testing.assert_array_equal(class_weights(y, 3, None), np.ones(len(y)))
    with pytest.raises(GdflowError, match="balanced"):
        class_weights(y, 3, "inverse")


def test_log_losses_match_sklearn_and_are_stable() -> None:
    rng = np.random.default_rng(1)
    logits, y, w = rng.normal(0, 3, 50), rng.integers(0, 2, 50), rng.uniform(0.1, 2, 50)
    expected = _sk_log_loss(y, expit(logits), sample_weight=w) * w.sum() / 50
    assert binary_log_loss(logits, y, w) == pytest.approx(expected, rel=1e-12)
    assert binary_log_loss(np.array([800.0, -800.0]), np.array([0, 1])) == 800.0
    logits3, y3 = rng.normal(0, 3, (50, 4)), rng.integers(0, 4, 50)
    expected3 = _sk_log_loss(y3, softmax(logits3, axis=1), sample_weight=w, labels=range(4))
    assert multiclass_log_loss(logits3, y3, w) == pytest.approx(expected3 * w.sum() / 50)
    assert multiclass_log_loss(np.array([[0.0, 900.0]]), np.array([0])) == 900.0


def test_binary_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(2)
    prob = np.round(rng.uniform(0, 1, 200), 1)  # many ties, some exactly 0.5
    y = (rng.uniform(0, 1, 200) < prob).astype(int)
    ours = binary_metrics(prob, y)
    pred = (prob > 0.5).astype(int)
    assert ours["log_loss"] == pytest.approx(_sk_log_loss(y, prob), rel=1e-12)
    assert ours["accuracy"] == pytest.approx(metrics.accuracy_score(y, pred), rel=1e-15)
    assert ours["roc_auc"] == pytest.approx(metrics.roc_auc_score(y, prob), rel=1e-12)
    assert ours["precision"] == pytest.approx(metrics.precision_score(y, pred), rel=1e-15)
    assert ours["recall"] == pytest.approx(metrics.recall_score(y, pred), rel=1e-15)
    assert ours["f1"] == pytest.approx(metrics.f1_score(y, pred), rel=1e-15)
    assert ours["confusion_matrix"] == metrics.confusion_matrix(y, pred).tolist()
    json.dumps(ours)  # plain Python numbers
    nothing = binary_metrics(np.full(4, 0.2), np.array([0, 0, 0, 1]))
    assert nothing["precision"] == nothing["recall"] == nothing["f1"] == 0.0
    assert binary_metrics(prob, np.ones(200, dtype=int))["roc_auc"] is None


def test_multiclass_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(3)
    prob = rng.dirichlet(np.ones(5), 300)
    prob[:, 4] = 0.0  # class 4 occurs neither as a target nor as a prediction
    prob /= prob.sum(axis=1, keepdims=True)
    y = rng.integers(0, 4, 300)
    ours = multiclass_metrics(prob, y, 5)
    pred = prob.argmax(axis=1)
    expected_loss = _sk_log_loss(y, prob, labels=range(5))
    assert ours["log_loss"] == pytest.approx(expected_loss, rel=1e-12)
    assert ours["accuracy"] == pytest.approx(metrics.accuracy_score(y, pred), rel=1e-15)
    assert ours["macro_f1"] == pytest.approx(metrics.f1_score(y, pred, average="macro"))
    assert ours["confusion_matrix"] == metrics.confusion_matrix(y, pred, labels=range(5)).tolist()
    json.dumps(ours)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_smoothness_is_the_mse_hessians_largest_eigenvalue(bias: bool) -> None:
    x = WINE_FIRST_FIVE
    expected = hessian_eigenvalues(x, bias=bias)[-1]
    assert smoothness(x, bias=bias, family="linear") == pytest.approx(expected, rel=1e-12)


def test_logistic_and_softmax_smoothness_bound_the_hessian() -> None:
    z = _design(_standardized(BREAST_MEANS))
    y, w = BREAST.target, class_weights(BREAST.target, 2, "balanced")
    bound = smoothness(z[:, :-1], bias=True, family="logistic", weights=w)
    theta = logistic_optimum(z[:, :-1], y, bias=True, weights=w).theta
    for params in (np.zeros(z.shape[1]), theta):  # at zero every sigma(1 - sigma) is 1/4
        p = expit(z @ params)
        top = np.linalg.eigvalsh(z.T @ (z * (w * p * (1 - p))[:, None]) / len(z))[-1]
        assert top <= bound * (1 + 1e-12)
        if not params.any():
            assert top == pytest.approx(bound, rel=1e-12)
    # Softmax over all k columns: at zero logits with k = 2 the bound 1/2 is attained.
    for x, y, k in [(BREAST_MEANS, BREAST.target, 2), (WINE_FIRST_FIVE, WINE.target, 3)]:
        a = _design(_standardized(x))
        found = softmax_optimum(a[:, :-1], y, k, bias=True).theta
        bound = smoothness(a[:, :-1], bias=True, family="softmax")
        for params in (np.zeros((a.shape[1], k)), found):
            p = softmax(a @ params, axis=1)
            curvature = np.einsum("ic,ce->ice", p, np.eye(k)) - np.einsum("ic,ie->ice", p, p)
            hessian = np.einsum("ij,il,ice->jcle", a, a, curvature) / len(a)
            top = np.linalg.eigvalsh(hessian.reshape(a.shape[1] * k, -1))[-1]
            assert top <= bound * (1 + 1e-12)
            if k == 2 and not params.any():
                assert top == pytest.approx(bound, rel=1e-12)
