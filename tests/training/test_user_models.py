"""A user's own model: registered by an installed package's entry point (always allowed) or a raw
`module:factory` reference (only where GDFLOW_ALLOW_MODEL_IMPORTS allows it), every way a
factory can be wrong refused in one line that names the reference."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from gdflow.config.errors import GdflowError
from gdflow.config.train import TrainConfig
from gdflow.training.user_models import ALLOW, build_user_module, load_factory

PLUGIN = textwrap.dedent(
    """
    import torch

    def good(n_features, n_outputs):
        return torch.nn.Sequential(torch.nn.Linear(n_features, 4), torch.nn.Tanh(),
                                   torch.nn.Linear(4, n_outputs))

    def wrong_shape(n_features, n_outputs):
        return torch.nn.Linear(n_features, n_outputs + 1)

    def not_a_module(n_features, n_outputs):
        return "a string"

    def raises(n_features, n_outputs):
        raise RuntimeError("no GPU here")

    NOT_CALLABLE = 3
    """
)


def install_plugin_files(folder: Path) -> None:
    """A package `gdflow_test_models` installed in `folder` the way pip installs one: the module
    and a dist-info whose entry points register two models under gdflow.models."""
    (folder / "gdflow_test_models.py").write_text(PLUGIN)
    info = folder / "gdflow_test_models-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: gdflow-test-models\nVersion: 0.1\n"
    )
    (info / "entry_points.txt").write_text(
        "[gdflow.models]\ntiny = gdflow_test_models:good\nmissing = gdflow_test_models_gone:good\n"
    )


def install_plugin(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test package installed in `folder`, on this process's sys.path for the test."""
    install_plugin_files(folder)
    monkeypatch.syspath_prepend(str(folder))


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOW, raising=False)
    install_plugin(tmp_path, monkeypatch)


@pytest.mark.usefixtures("plugin")
def test_a_registered_model_is_built_seeded_and_checked() -> None:
    first = build_user_module("tiny", 3, 2, seed=7, dtype=torch.float64)
    again = build_user_module("tiny", 3, 2, seed=7, dtype=torch.float64)
    other = build_user_module("tiny", 3, 2, seed=8, dtype=torch.float64)
    weights = [p.detach().clone() for p in first.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(weights, again.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(weights, other.parameters()))
    assert first(torch.zeros(5, 3, dtype=torch.float64)).shape == (5, 2)
    assert TrainConfig(model="tiny").user_model


@pytest.mark.usefixtures("plugin")
def test_a_raw_reference_is_refused_unless_this_machine_allows_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(GdflowError) as refused:
        load_factory("gdflow_test_models:good")
    message = str(refused.value)
    assert "'gdflow.models' entry points" in message and f"{ALLOW}=1" in message
    monkeypatch.setenv(ALLOW, "1")
    assert callable(load_factory("gdflow_test_models:good"))


@pytest.mark.usefixtures("plugin")
@pytest.mark.parametrize(
    ("reference", "message"),
    [
        (
            "gdflow_test_models:wrong_shape",
            r"outputs of shape \(2, 3\) .* it must give \(batch, 2\)",
        ),
        ("gdflow_test_models:not_a_module", "returned str, not a torch.nn.Module"),
        ("gdflow_test_models:raises", "raised RuntimeError: no GPU here"),
        ("gdflow_test_models:NOT_CALLABLE", "int is not callable"),
        ("gdflow_test_models:absent", "has no attribute 'absent'"),
        ("no_such_package_xyz:make", "cannot import 'no_such_package_xyz'"),
        ("missing", "its entry point 'gdflow_test_models_gone:good' failed to load"),
    ],
)
def test_each_way_a_factory_fails_is_one_line_naming_it(
    reference: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ALLOW, "1")
    with pytest.raises(GdflowError) as error:
        build_user_module(reference, 3, 2, seed=0, dtype=torch.float32)
    text = str(error.value)
    assert text.startswith(f"--model {reference}: ") and "\n" not in text
    assert __import__("re").search(message, text), text


@pytest.mark.usefixtures("plugin")
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"model": "tree"}, r"a registered model \(missing, tiny\) or package.module:factory"),
        ({"model": "tiny", "standardize": True}, "--standardize cannot be folded"),
        ({"model": "tiny", "hidden": "8"}, "--hidden and --activation apply to --model mlp"),
    ],
)
def test_config_refuses_unknown_models_and_options_a_user_model_cannot_take(
    fields: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        TrainConfig(**fields)
