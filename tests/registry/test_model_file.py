"""A model's safetensors file: every family round-trips to the same parameters and the same
predictions as training's own evaluation functions; files that are not gdflow models are
refused with one line; loading never unpickles."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save as save_tensors

from gdflow.config.errors import GdflowError
from gdflow.registry.model_file import FORMAT, ModelSpec, from_bytes, to_bytes
from gdflow.registry.predictor import Predictor
from gdflow.training.classification import binary_log_loss, multiclass_log_loss
from gdflow.training.classifier_evaluation import probabilities, weight_matrix
from gdflow.training.evaluation import mse, predict
from gdflow.training.mlp import flat_names, flat_values, load_flat
from gdflow.training.network_evaluation import outputs_of

RNG = np.random.default_rng(7)
X = RNG.normal(size=(40, 3))
FEATURES = ("a", "b", "c")


def _params(spec: ModelSpec) -> dict[str, float]:
    names = spec.parameter_names()
    return dict(zip(names, RNG.normal(size=len(names)).tolist()))


def _round_trip(spec: ModelSpec, params: dict[str, float]) -> Predictor:
    loaded = from_bytes(to_bytes(spec, params), what="model m version 1")
    assert loaded.spec == spec
    assert loaded.parameters() == params  # bit for bit, names and order included
    return Predictor(loaded)


@pytest.mark.parametrize("bias", [True, False])
def test_a_linear_model_predicts_and_scores_as_training_evaluates_it(bias: bool) -> None:
    spec = ModelSpec("linear", "regression", FEATURES, "y", None, bias, 1)
    params = _params(spec)
    predictor = _round_trip(spec, params)
    y = RNG.normal(size=40)
    np.testing.assert_allclose(predictor.outputs(X), predict(X, params), rtol=1e-14)
    assert predictor.loss(X, y) == pytest.approx(mse(X, y, params), rel=1e-13)
    values, probs = predictor.labelled(X)
    assert probs is None and values == pytest.approx(predict(X, params).tolist())


def test_the_seed_model_keeps_its_one_weight_named_w() -> None:
    spec = ModelSpec("linear", "regression", ("x",), "y", None, False, 1)
    predictor = _round_trip(spec, {"w": 1.9999999})
    assert predictor.outputs(np.array([[5.0]])) == pytest.approx([9.9999995])


def test_a_logistic_model_gives_the_probability_and_log_loss_of_training() -> None:
    spec = ModelSpec("logistic", "binary", FEATURES, "y", ("no", "yes"), True, 1)
    params = _params(spec)
    predictor = _round_trip(spec, params)
    theta = weight_matrix(params, n_features=3, outputs=1)
    expected = probabilities(X, theta, family="logistic")
    np.testing.assert_allclose(predictor.outputs(X), expected, rtol=1e-13)
    y = (RNG.random(40) < 0.5).astype(np.float64)
    logits = np.hstack([X, np.ones((40, 1))]) @ theta[:, 0]
    assert predictor.loss(X, y) == pytest.approx(binary_log_loss(logits, y), rel=1e-13)
    labels, table = predictor.labelled(X)
    assert labels == ["yes" if p > 0.5 else "no" for p in expected]
    assert table is not None and np.allclose(table.sum(axis=1), 1.0)


def test_a_softmax_model_keeps_its_classes_and_their_order() -> None:
    spec = ModelSpec("softmax", "multiclass", FEATURES, "kind", ("setosa", "virginica", 3), True, 3)
    params = _params(spec)
    predictor = _round_trip(spec, params)
    theta = weight_matrix(params, n_features=3, outputs=3)
    expected = probabilities(X, theta, family="softmax")
    np.testing.assert_allclose(predictor.outputs(X), expected, rtol=1e-13)
    y = RNG.integers(0, 3, size=40)
    logits = np.hstack([X, np.ones((40, 1))]) @ theta
    assert predictor.loss(X, y) == pytest.approx(multiclass_log_loss(logits, y), rel=1e-13)
    labels, _ = predictor.labelled(X)
    assert labels == [spec.classes[i] for i in expected.argmax(axis=1)]  # type: ignore[index]


@pytest.mark.parametrize("task,outputs", [("regression", 1), ("binary", 1), ("multiclass", 4)])
def test_an_mlp_is_rebuilt_with_its_layers_and_weights(task: str, outputs: int) -> None:
    classes = None if task == "regression" else tuple(range(max(outputs, 2)))
    spec = ModelSpec("mlp", task, FEATURES, "y", classes, True, outputs, (5, 4), "gelu")
    trained = spec.build_network(seed=11)
    params = dict(zip(flat_names(trained), flat_values(trained).tolist()))
    predictor = _round_trip(spec, params)
    reference = load_flat(spec.build_network(seed=0), list(params.values()))
    np.testing.assert_array_equal(predictor.logits(X), outputs_of(reference, X))
    state = from_bytes(to_bytes(spec, params), what="m").tensors
    assert set(state) == set(trained.state_dict())  # a plain state_dict, loadable by torch


def test_a_file_that_is_not_a_gdflow_model_is_one_line_naming_the_version() -> None:
    with pytest.raises(GdflowError, match="^model toy version 3: its file is not a safetensors"):
        from_bytes(b"\x00" * 64, what="model toy version 3")
    foreign = save_tensors({"weight": torch.zeros(1, 1)}, metadata={"format": "pt"})
    with pytest.raises(GdflowError, match="was not written by gdflow") as caught:
        from_bytes(foreign, what="model toy version 3")
    assert "\n" not in str(caught.value)


def test_the_header_holds_the_spec_as_json_and_no_code() -> None:
    spec = ModelSpec("linear", "regression", ("x",), "y", None, False, 1)
    data = to_bytes(spec, {"w": 2.0})
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    assert header["__metadata__"]["format"] == FORMAT
    assert json.loads(header["__metadata__"]["gdflow"])["feature_names"] == ["x"]
    assert b"pickle" not in data and b"torch._utils" not in data
