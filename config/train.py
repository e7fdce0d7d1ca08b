"""The typed training configuration: CLI flags, the flow parameter and the UI's run form."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
#: Characters of a file name kept in run names and tags; others become `_`.
_UNSAFE_LABEL = re.compile(r"[^\w.+-]")
#: The largest seed torch's generators take.
MAX_SEED = 2**64 - 1
#: Model families gdflow trains, and the task each one does.
FAMILIES: dict[str, str] = {
    "linear": "regression",
    "logistic": "binary",
    "softmax": "multiclass",
    "mlp": "regression",  # or --task binary / multiclass
}
#: Families that do one task only, the one FAMILIES gives; mlp and user models do any (`--task`).
ONE_TASK = ("linear", "logistic", "softmax")
#: The entry-point group under which installed packages register model factories.
MODEL_ENTRY_POINTS = "gdflow.models"
#: The setting of a training machine that lets runs import raw `module:factory` references.
ALLOW_MODEL_IMPORTS = "GDFLOW_ALLOW_MODEL_IMPORTS"
#: Options that steer gdflow, not what a run trains: --skip-unchanged ignores them.
STEERING = frozenset(
    {
        "skip_unchanged",
        "log_every",
        "database_url",
        "model_store",
        "promote",
        "promote_margin",
        "device",
        "predict",
        "on_schema_change",
        "on_drift",
        "drift_psi",
        "drift_mean_shift",
        "prune_keep_last",
        "prune_older_than_days",
        "dask_address",
        "cluster_timeout",
    }
)
#: `--dask-address local` or `local:N`: a LocalCluster of N worker processes for the run.
LOCAL_ADDRESS = re.compile(r"local(?::(\d{1,3}))?", re.IGNORECASE)
#: Seconds a run on a Dask cluster waits for any of its tasks to finish (--cluster-timeout).
CLUSTER_TIMEOUT = 300.0
#: A model name: saved versions live under it in the store and the database.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
#: A user model's raw reference: `package.module:factory`.
_REFERENCE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


#: Names `--delimiter` takes besides the character itself.
DELIMITER_NAMES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}


def parse_delimiter(text: str) -> Optional[str]:
    """`--delimiter` as one character (`tab` and `\\t` are a tab); None when it cannot be one."""
    value = DELIMITER_NAMES.get(text.lower(), text)
    if len(value) != 1 or value in '"\r\n' or value.isalnum():
        return None
    return value


def delimiter_value(cls: type, value: Any) -> Optional[str]:
    """A `delimiter` field's validator: one character, or its name (tab, comma, semicolon,
    pipe); empty is not given."""
    if value is None or value == "":
        return None
    parsed = parse_delimiter(str(value))
    if parsed is None:
        raise ValueError(
            "must be one character such as ',' ';' '|' or the word tab, not a letter, "
            "digit, quote or line break"
        )
    return parsed


def registered_models() -> list[str]:
    """Names of the models installed packages register (entry points of MODEL_ENTRY_POINTS)."""
    from importlib.metadata import entry_points

    return sorted(point.name for point in entry_points(group=MODEL_ENTRY_POINTS))


Task = Literal["regression", "binary", "multiclass"]


def safe_label(text: str, limit: int = 40) -> str:
    """`text` for a Prefect run name or tag: letters, digits and `._+-` only, at most `limit`
    characters, so markup or control characters in a file name are never interpreted."""
    label = _UNSAFE_LABEL.sub("_", text)[:limit]
    return label or "data"


class TrainConfig(BaseModel):
    """Everything one training run needs; the defaults reproduce the seed tutorial exactly."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data: Optional[str] = Field(
        default=None,
        description=(
            "Data to train on: a CSV or TSV file (optionally .gz/.bz2/.xz/.zst), a Parquet file "
            "or folder of Parquet files, local or at an fsspec URL (s3://, https://); empty for "
            "the seed's toy data (y = 2x)."
        ),
    )
    features: Optional[list[str]] = Field(
        default=None,
        description=(
            "Feature columns of --data, comma-separated (default: every column but the target)."
        ),
    )
    target: Optional[str] = Field(
        default=None,
        description="Target column of --data (default: the last column).",
    )
    delimiter: Optional[str] = Field(
        default=None,
        description=(
            "Column delimiter of a CSV/TSV --data: one character, or tab (default: detected "
            "from the first lines, and the run's log says what was detected)."
        ),
    )
    model: str = Field(
        default="linear",
        description=(
            "Model family: linear (regression, MSE; the seed), logistic (binary "
            "classification, cross-entropy), softmax (multiclass classification), mlp (a "
            "multilayer perceptron for --task regression, binary or multiclass), the name of a "
            "model an installed package registers (entry points 'gdflow.models') or "
            "package.module:factory (where the training machine sets "
            "GDFLOW_ALLOW_MODEL_IMPORTS=1; gdflow run and sweep do)."
        ),
    )
    task: Optional[Task] = Field(
        default=None,
        description="regression, binary or multiclass (default: the one --model does).",
    )
    hidden: Optional[list[int]] = Field(
        default=None,
        description="Hidden layer widths of --model mlp, comma-separated (default: 64).",
    )
    activation: Literal["relu", "tanh", "gelu"] = Field(
        default="relu", description="Activation between the hidden layers of --model mlp."
    )
    class_weight: Optional[Literal["balanced"]] = Field(
        default=None,
        description=(
            "'balanced': weight each row by n / (classes x rows of its class), for "
            "imbalanced classes (classifiers only; default: every row weighs 1)."
        ),
    )
    validation_split: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="Fraction of rows held out for validation (seeded by --seed; 0: none).",
    )
    standardize: bool = Field(
        default=False,
        description=(
            "Standardise features (and centre a regression target; never a class label) on "
            "the training split; parameters and predictions stay in the original units. "
            "Implies --bias unless --no-bias."
        ),
    )
    bias: bool = Field(default=False, description="Fit an intercept b as well as the weights.")
    init: Union[float, Literal["random", "champion"]] = Field(
        default=1.0,
        description=(
            "Initial value of every weight, 'random' for N(0, 1) draws from --seed, or "
            "'champion' to start from the weights of the --name model's champion (warm start)."
        ),
    )
    lr: Union[Annotated[float, Field(gt=0)], Literal["auto"]] = Field(
        default=0.01,
        description=(
            "Learning rate of the optimizer, or 'auto': 1/largest Hessian eigenvalue of the "
            "training data (0.01 for adam). --standardize implies auto unless --lr is given."
        ),
    )
    optimizer: Literal["sgd", "adam"] = Field(
        default="sgd", description="torch.optim optimizer: sgd or adam."
    )
    momentum: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="SGD momentum (0: plain gradient descent)."
    )
    nesterov: bool = Field(default=False, description="Nesterov momentum (needs --momentum > 0).")
    lr_schedule: Literal["constant", "step", "cosine"] = Field(
        default="constant",
        description="Learning-rate schedule: constant, step (x gamma every N epochs) or cosine.",
    )
    lr_step_epochs: int = Field(
        default=100, ge=1, description="Epochs between steps of the step schedule."
    )
    lr_gamma: float = Field(
        default=0.5, gt=0.0, le=1.0, description="Factor of each step of the step schedule."
    )
    batch_size: Optional[int] = Field(
        default=None,
        ge=1,
        description="Rows per mini-batch, shuffled each epoch by --seed (default: full batch).",
    )
    stream: bool = Field(
        default=False,
        description=(
            "Stream a Parquet --data a record batch at a time instead of loading it (needs "
            "--batch-size; default: streamed when it would not fit in memory, as the run's log "
            "says)."
        ),
    )
    shuffle_buffer: Optional[int] = Field(
        default=None,
        ge=1,
        le=1 << 40,
        description=(
            "Rows of the shuffle buffer a streamed run draws its mini-batches from (default: "
            "64 batches, at least 65,536 rows)."
        ),
    )
    dask_address: Optional[str] = Field(
        default=None,
        description=(
            "Train full-batch epochs on a Dask cluster: the scheduler's [tcp://]HOST:PORT, or "
            "local / local:N for a local cluster of N worker processes started for the run. "
            "The workers read and keep a Parquet --data (one file each at a time: a path they "
            "all see, or an fsspec URL) and send back per-file gradients; the driver steps. "
            "Default: train in this process."
        ),
    )
    cluster_timeout: float = Field(
        default=CLUSTER_TIMEOUT,
        gt=0,
        le=7 * 24 * 3600,
        description=(
            "Seconds a --dask-address run waits while none of its tasks (reading the data, an "
            "epoch's gradients) finishes, e.g. with every worker gone, before it fails."
        ),
    )
    epochs: int = Field(default=100, ge=1, description="Maximum number of epochs.")
    tolerance: Optional[float] = Field(
        default=None,
        gt=0,
        description="Converged once the loss changes by less than this between epochs.",
    )
    patience: int = Field(
        default=1,
        ge=1,
        description="Consecutive epochs the loss change must stay below --tolerance.",
    )
    plateau_epochs: Optional[int] = Field(
        default=None,
        ge=1,
        description="Stop as plateaued after this many epochs without a new best loss.",
    )
    diverge_factor: float = Field(
        default=1e6,
        gt=1.0,
        description="Diverged once the loss exceeds the first epoch's loss times this.",
    )
    device: str = Field(
        default="cpu",
        description="Where tensors live: auto, cpu, cuda, cuda:N or mps.",
    )
    dtype: Literal["float32", "float64"] = Field(
        default="float32", description="Floating-point precision of the tensors."
    )
    seed: int = Field(
        default=0,
        ge=0,
        le=MAX_SEED,
        description="Seed of random init, the validation split and mini-batch shuffling.",
    )
    predict: Optional[list[list[float]]] = Field(
        default=None,
        description=(
            "Inputs to predict after training: numbers, or comma-separated rows for "
            "several features (default: 5 for the toy data, none for --data)."
        ),
    )
    log_every: int = Field(
        default=10, ge=0, description="Log a progress line every N epochs (0: never)."
    )
    database_url: Optional[str] = Field(
        default=None,
        description=(
            "SQLAlchemy URL of the metrics database "
            "(default: $GDFLOW_DATABASE_URL or ~/.gdflow/gdflow.db)."
        ),
    )
    name: Optional[str] = Field(
        default=None,
        description=(
            "Model name the run's model is saved under as a new version (default: the data "
            "file's name without extension; toy for the seed's data)."
        ),
    )
    skip_unchanged: bool = Field(
        default=False,
        description=(
            "Train nothing when the data's fingerprint and the training options equal those of "
            "the --name model's last completed run: the run is recorded as skipped, pointing at "
            "that run (on in the scheduled deployment)."
        ),
    )
    on_schema_change: Literal["fail", "warn"] = Field(
        default="fail",
        description=(
            "When the data's columns (names, order, types) or classes differ from the "
            "champion's training data: fail the run before training, or warn and train."
        ),
    )
    on_drift: Literal["warn", "fail"] = Field(
        default="warn",
        description=(
            "When a feature drifted from the champion's training data (--drift-psi, "
            "--drift-mean-shift): warn and train, or fail the run before training."
        ),
    )
    drift_psi: float = Field(
        default=0.2, gt=0, description="Population stability index above which a feature drifted."
    )
    drift_mean_shift: float = Field(
        default=1.0,
        gt=0,
        description="Shift of a feature's mean, in the champion data's standard deviations, "
        "above which it drifted.",
    )
    promote: Literal["auto", "always", "never"] = Field(
        default="auto",
        description=(
            "Make the new version the champion: auto (only if its loss on this run's "
            "validation rows, or training rows without a split, beats the champion's by "
            "--promote-margin), always, or never. A name's first version is always champion."
        ),
    )
    promote_margin: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="Relative improvement over the champion's loss that --promote auto needs.",
    )
    model_store: Optional[str] = Field(
        default=None,
        description=(
            "Folder or fsspec URL (s3://bucket/prefix) of the model files (default: "
            "$GDFLOW_MODEL_STORE, else the folder models/ beside a SQLite database, else "
            "~/.gdflow/models)."
        ),
    )
    prune_keep_last: Optional[int] = Field(
        default=None,
        ge=1,
        description=(
            "After the run: delete the --name model's runs beyond its N newest, with their "
            "epoch rows (never a running run, the champion's run or the newest completed one; "
            "no VACUUM: new rows reuse the space; not in a sweep). Default: keep every run."
        ),
    )
    prune_older_than_days: Optional[float] = Field(
        default=None,
        gt=0,
        le=100_000,
        allow_inf_nan=False,
        description=(
            "After the run: delete the --name model's runs started more than DAYS ago, as "
            "--prune-keep-last does (with both, only runs that neither keeps)."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _standardize_implies_bias(cls, data: Any) -> Any:
        """Centring needs an intercept: --standardize turns --bias on unless it is given. A
        classifier starts from zero weights (every class equally likely) unless --init is given."""
        model = data.get("model") if isinstance(data, dict) else None
        if str(model).strip().lower() in ("logistic", "softmax") and data.get("init") is None:
            data = {**data, "init": 0.0}
        flag = data.get("standardize") if isinstance(data, dict) else None
        if flag is True or str(flag).strip().lower() in {"1", "true", "t", "yes", "y", "on"}:
            implied = {"bias": True, "lr": "auto"}
            return {**data, **{k: v for k, v in implied.items() if data.get(k) is None}}
        return data

    @field_validator("model", mode="before")
    @classmethod
    def _check_model(cls, value: Any) -> Any:
        """A built-in family (any case), a registered model's name or a module:factory
        reference (whether this machine imports raw references is decided where it trains)."""
        text = str(value).strip()
        if text.lower() in FAMILIES:
            return text.lower()
        if _REFERENCE.match(text) or text in registered_models():
            return text
        known = ", ".join(registered_models()) or "none installed"
        raise ValueError(
            f"must be one of {', '.join(FAMILIES)}, a registered model ({known}) or "
            "package.module:factory"
        )

    @field_validator("hidden", mode="before")
    @classmethod
    def _parse_hidden(cls, value: Any) -> Any:
        """Accept '64,32' (or ['64,32'] from the command line) as well as [64, 32]."""
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if not isinstance(value, (str, int, list, tuple)):
            raise ValueError("give hidden layer widths as positive whole numbers, e.g. 64,32")
        items = [value] if isinstance(value, (str, int)) else list(value)
        widths: list[int] = []
        for item in items:
            for part in str(item).split(","):
                text = part.strip()
                if not text.isdigit() or int(text) < 1 or int(text) > 1_000_000:
                    raise ValueError(
                        f"{part.strip()!r} is not a layer width: give positive whole numbers, "
                        "e.g. 64,32"
                    )
                widths.append(int(text))
        return widths

    @field_validator("task", "class_weight", "activation", mode="before")
    @classmethod
    def _lower_choice(cls, value: Any) -> Any:
        """Choices in any case; blank (an empty UI form field) is not given."""
        if isinstance(value, str):
            return value.strip().lower() or None
        return value

    _delimiter = field_validator("delimiter", mode="before")(delimiter_value)

    @field_validator("dask_address", mode="before")
    @classmethod
    def _check_dask_address(cls, value: Any) -> Any:
        """Blank means none; else local, local:N (1-256) or [scheme://]host:port."""
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        from gdflow.config.sweep import scheduler_host  # sweep imports this module

        text = str(value).strip()
        local = LOCAL_ADDRESS.fullmatch(text)
        if local and (local.group(1) is None or 1 <= int(local.group(1)) <= 256):
            return text.lower()
        if local or scheduler_host(text) is None:
            raise ValueError(
                "give the Dask scheduler as [tcp://]HOST:PORT (e.g. tcp://10.0.0.5:8786), or "
                "local / local:N for a local cluster of N (1-256) worker processes"
            )
        return text

    @field_validator("data", "target", "database_url", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        """Treat empty strings (an empty UI form field) as not given."""
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("features", mode="before")
    @classmethod
    def _split_features(cls, value: Any) -> Any:
        """Accept 'a,b' as well as ['a', 'b'] (or ['a,b'] from the command line)."""
        if value is None:
            return None
        if not isinstance(value, (str, list, tuple)):
            raise ValueError("must be column names, e.g. 'a,b'")
        items = [value] if isinstance(value, str) else list(value)
        names = [part.strip() for item in items for part in str(item).split(",")]
        names = [name for name in names if name]
        return names or None

    @field_validator("lr", mode="before")
    @classmethod
    def _parse_lr(cls, value: Any) -> Any:
        """Accept 'auto' in any case; numbers (also as strings) are parsed by the float type."""
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        return value

    @field_validator("init", mode="before")
    @classmethod
    def _parse_init(cls, value: Any) -> Any:
        """Accept numbers given as strings (CLI) and 'random' in any case."""
        if isinstance(value, str):
            text = value.strip().lower()
            if text in ("random", "champion"):
                return text
            try:
                return float(text)
            except ValueError:
                raise ValueError("must be a number, 'random' or 'champion'") from None
        return value

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: Optional[str]) -> Optional[str]:
        """A model name is a file and URL component: letters, digits and `._-`."""
        if value is not None and not MODEL_NAME.fullmatch(value):
            raise ValueError(
                "must be 1 to 100 letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
        return value

    @field_validator("device", mode="before")
    @classmethod
    def _check_device(cls, value: Any) -> Any:
        """Accept only device strings torch understands; availability is checked at run time."""
        text = str(value).strip().lower()
        if not _DEVICE_PATTERN.match(text):
            raise ValueError("must be one of auto, cpu, cuda, cuda:N or mps")
        return text

    @field_validator("predict", mode="before")
    @classmethod
    def _rows(cls, value: Any) -> Any:
        """Turn 5, '5', [5, 7.5] or ['1,2', '3,4'] into a list of input rows."""
        if value is None:
            return None
        items = value if isinstance(value, (list, tuple)) else [value]
        rows: list[Any] = []
        for item in items:
            if isinstance(item, str):
                rows.append([part for part in item.replace(" ", "").split(",") if part])
            elif isinstance(item, (list, tuple)):
                rows.append(list(item))
            else:
                rows.append([item])
        return rows

    @field_validator("lr", "tolerance", "init")
    @classmethod
    def _finite(cls, value: Any) -> Any:
        """NaN and infinity are not usable step sizes, tolerances or initial weights."""
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        """Cross-field rules: data options need data; momentum and Nesterov need SGD."""
        if self.data is None and (self.features or self.target):
            raise ValueError("--features and --target need --data PATH")
        if self.momentum and self.optimizer != "sgd":
            raise ValueError("--momentum applies to --optimizer sgd only")
        if self.cluster_timeout != CLUSTER_TIMEOUT and not self.dask_address:
            raise ValueError(
                "--cluster-timeout applies to runs on a Dask cluster only; give --dask-address "
                "or drop --cluster-timeout"
            )
        if self.nesterov and self.momentum == 0:
            raise ValueError("--nesterov needs --momentum above 0")
        family_task = FAMILIES.get(self.model, "regression")
        if self.model != "mlp" and (self.hidden is not None or self.activation != "relu"):
            raise ValueError("--hidden and --activation apply to --model mlp only")
        if self.user_model and self.standardize:
            raise ValueError(
                "--standardize cannot be folded into a user model's weights (its parameters "
                "would not be in the data's units); standardise inside the module instead"
            )
        if self.task is not None and self.task != family_task and self.model in ONE_TASK:
            raise ValueError(
                f"--task {self.task} contradicts --model {self.model}, which does "
                f"{family_task}; drop --task or choose another --model"
            )
        if self.class_weight is not None and self.resolved_task == "regression":
            raise ValueError(
                "--class-weight applies to classifiers (--model logistic, softmax, or mlp with "
                "--task binary or multiclass) only"
            )
        return self

    @property
    def resolved_task(self) -> Task:
        """The task of this run: --task, else the one --model does (regression for a network)."""
        return self.task or FAMILIES.get(self.model, "regression")  # type: ignore[return-value]

    @property
    def user_model(self) -> bool:
        """Whether --model names a user's factory (registered, or module:factory)."""
        return self.model not in FAMILIES

    @property
    def network(self) -> bool:
        """Whether the model is a torch module of its own (mlp, or a user's model)."""
        return self.model == "mlp" or self.user_model

    @property
    def classifier(self) -> bool:
        """Whether the run classifies (its target is a class label)."""
        return self.resolved_task != "regression"

    @property
    def prediction_inputs(self) -> list[list[float]]:
        """Rows to predict: --predict, else the seed's x = 5 for the toy data, else none."""
        if self.predict is not None:
            return self.predict
        return [[5.0]] if self.data is None else []

    @property
    def data_source(self) -> str:
        """A short description of where the data comes from (for names, tags and the database)."""
        return self.data if self.data else "toy:y=2x"

    @property
    def model_name(self) -> str:
        """The name the run's model is saved under: --name, else the data file's stem."""
        if self.name:
            return self.name
        stem = Path(self.data).name.split(".")[0] if self.data else "toy"
        label = re.sub(r"[^A-Za-z0-9._-]", "_", stem)[:100].lstrip("._-")
        return label or "model"

    def run_name(self) -> str:
        """A flow-run name that tells runs apart in a list: data, lr, device, epochs."""
        stem = safe_label(Path(self.data).stem) if self.data else "toy"
        return f"{stem}-lr{self.lr_label}-{self.device}-{self.epochs}ep"

    def training_identity(self) -> dict[str, Any]:
        """The options that decide what a run trains (for --skip-unchanged): the public
        config without the ones that only steer gdflow itself (STEERING)."""
        values = self.public_dict()
        return {k: v for k, v in values.items() if k not in STEERING}

    def public_dict(self) -> dict[str, Any]:
        """The config as JSON values, with any password in the database URL masked."""
        from gdflow.storage import mask_url

        values = self.model_dump(mode="json")
        if self.database_url:
            values["database_url"] = mask_url(self.database_url)
        return values

    @property
    def lr_label(self) -> str:
        """The learning rate as shown in names and tags: `0.01` or `auto`."""
        return self.lr if isinstance(self.lr, str) else f"{self.lr:g}"
