"""The typed config: seed defaults, coercion from CLI strings, and one clear error per bad field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gdflow.config.train import TrainConfig


def test_defaults_are_the_seed() -> None:
    config = TrainConfig()
    assert (config.lr, config.epochs, config.init, config.device, config.bias) == (
        0.01,
        100,
        1.0,
        "cpu",
        False,
    )
    assert config.data is None and config.prediction_inputs == [[5.0]]
    assert config.dtype == "float32" and config.predict is None
    assert TrainConfig(data="d.csv").prediction_inputs == []
    assert config.run_name() == "toy-lr0.01-cpu-100ep"


def test_cli_strings_are_coerced() -> None:
    config = TrainConfig(
        data="d.csv",
        features=["a,b"],
        target="y",
        lr="0.1",
        epochs="7",
        init="random",
        predict=["5", "7.5"],
        device="CUDA:1",
    )
    assert config.features == ["a", "b"]
    assert config.lr == 0.1 and config.epochs == 7 and config.init == "random"
    assert config.predict == [[5.0], [7.5]] and config.device == "cuda:1"
    assert TrainConfig(data="d.csv", predict=["1,2", "3, 4"]).predict == [[1, 2], [3, 4]]
    assert TrainConfig(predict=5).predict == [[5.0]]


def test_blank_form_fields_mean_not_given() -> None:
    config = TrainConfig(data="", target="", database_url="  ")
    assert config.data is None and config.target is None and config.database_url is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("lr", 0),
        ("lr", -1),
        ("lr", float("nan")),
        ("lr", float("inf")),
        ("epochs", 0),
        ("tolerance", 0),
        ("device", "tpu"),
        ("device", "cuda:x"),
        ("init", "ones"),
        ("init", float("nan")),
        ("dtype", "float16"),
        ("seed", -1),
        ("predict", ["a"]),
    ],
)
def test_invalid_values_name_their_field(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as info:
        TrainConfig(**{field: value})
    assert info.value.errors()[0]["loc"][0] == field


def test_unknown_fields_are_rejected() -> None:
    with pytest.raises(ValidationError):
        TrainConfig(learning_rate=0.1)  # type: ignore[call-arg]


def test_features_need_data() -> None:
    with pytest.raises(ValidationError, match="need --data"):
        TrainConfig(features=["a"])


def test_config_is_frozen() -> None:
    with pytest.raises(ValidationError):
        TrainConfig().lr = 1.0  # type: ignore[misc]


def test_json_round_trip() -> None:
    config = TrainConfig(data="d.csv", features=["a", "b"], bias=True, tolerance=1e-9)
    assert TrainConfig.model_validate(config.model_dump(mode="json")) == config


@pytest.mark.parametrize("flag", [True, "true", "1", "yes", "on", "TRUE"])
def test_standardize_implies_bias_and_auto_lr_unless_given(flag: object) -> None:
    config = TrainConfig(standardize=flag)
    assert config.standardize and config.bias and config.lr == "auto"
    explicit = TrainConfig(standardize=flag, bias=False, lr=0.1)
    assert not explicit.bias and explicit.lr == 0.1


def test_the_training_identity_leaves_out_what_only_steers_gdflow() -> None:
    """--skip-unchanged compares what is trained: not logging, storage, device or promotion."""
    base = TrainConfig(data="d.csv", lr=0.1)
    steered = TrainConfig(
        data="d.csv",
        lr=0.1,
        log_every=1,
        skip_unchanged=True,
        database_url="sqlite:///x.db",
        model_store="/tmp/m",
        promote="never",
        promote_margin=0.1,
        device="cpu",
        predict=[[1.0]],
    )
    assert steered.training_identity() == base.training_identity()
    for changed in ({"lr": 0.2}, {"epochs": 7}, {"name": "other"}, {"seed": 3}, {"bias": True}):
        options = {"data": "d.csv", "lr": 0.1, **changed}
        assert TrainConfig(**options).training_identity() != base.training_identity()


def test_a_cluster_timeout_needs_a_cluster() -> None:
    with pytest.raises(ValidationError, match="--cluster-timeout applies to runs on a Dask"):
        TrainConfig(data="d.parquet", cluster_timeout=60)
    assert TrainConfig(data="d", dask_address="local", cluster_timeout=60).cluster_timeout == 60
    assert TrainConfig(data="d", cluster_timeout=300).dask_address is None  # the default
