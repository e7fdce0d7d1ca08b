"""The seed's gradient-descent loop in PyTorch: a model (the seed's linear model with MSE loss, or
a classifier with cross-entropy, `model`), a torch.optim optimizer.

Each epoch is the tutorial's: forward, loss, backward, step, zero_grad (or one such step per
mini-batch), then its records are kept on the device (`records`). Every chunk of epochs, or
every `flush_seconds`, the records are copied to the host, checked by the stop rules
(`stopping`) and handed on (`result`). Large full-batch linear problems compute the loss from
the rows' sufficient statistics (`statistics_mse`: X^T X, X^T y, y^T y formed once, then O(d^2)
an epoch whatever the rows) or, for wide data and short runs, with `fused_mse` (one pass over
the data for the loss and its gradient); the seed's toy data keeps the seed's exact operations
(`loss_path_of` says which). A stop asked for from outside (`should_stop`, e.g. on SIGTERM)
ends training after the current epoch, with every epoch so far handed on, as `cancelled`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Optional

import torch

from gdflow.training.batches import MiniBatches
from gdflow.training.fused_cross_entropy import choose_classifier_path
from gdflow.training.model import (
    CLASSIFIERS,
    ClassifierModel,
    LinearModel,
    NetworkModel,
    TrainingData,
    build_model,
)
from gdflow.training.optimization import Optimization, make_optimizer, make_scheduler, zero_grad
from gdflow.training.records import CHUNK_EPOCHS, FLUSH_SECONDS, EpochChunk, EpochRecords
from gdflow.training.result import History, TrainResult
from gdflow.training.statistics_mse import LossPath, choose_loss_path


@dataclass(frozen=True)
class Hooks:
    """What `fit` hands on and asks while it runs: chunks of records (every `chunk_epochs`
    epochs or `flush_seconds`, at most), and whether to stop (why, e.g. "SIGTERM", or None)."""

    on_chunk: Optional[Callable[[EpochChunk], None]] = None
    should_stop: Optional[Callable[[], Optional[str]]] = None
    chunk_epochs: int = CHUNK_EPOCHS
    flush_seconds: float = FLUSH_SECONDS

    def asked_to_stop(self) -> Optional[str]:
        """Why the caller asks to stop now, or None to go on."""
        return self.should_stop() if self.should_stop is not None else None


class EpochEnd:
    """What every training loop does after an epoch: hand its records on every chunk of epochs
    (or every `flush_seconds`) to the stop rules, and stop when they say so or when the caller
    asks (then as `cancelled`, with every epoch so far handed on)."""

    def __init__(self, records: EpochRecords, history: History, hooks: Hooks, epochs: int):
        self.records, self.history, self.hooks, self.epochs = records, history, hooks, epochs
        self.last_flush = time.monotonic()

    def __call__(self, epoch: int) -> bool:
        """After `epoch`: True when training stops."""
        asked = self.hooks.asked_to_stop()
        if not (
            asked
            or self.records.full
            or epoch == self.epochs
            or time.monotonic() - self.last_flush >= self.hooks.flush_seconds
        ):
            return False
        stop = self.hand_on(epoch)
        if not stop and asked and epoch < self.epochs:
            stop = self.history.cancel(f"stopped by {asked} after epoch {epoch}")
        return stop

    def hand_on(self, last_epoch: int) -> bool:
        """Hand the epochs recorded so far (the last `last_epoch`) to the stop rules and on;
        True when the stop rules stop training."""
        if not self.records.count:
            return False
        stop = self.history.add(*self.records.take(), last_epoch=last_epoch)
        self.last_flush = time.monotonic()
        return stop


def loss_path_of(data: TrainingData, opt: Optimization, device: torch.device) -> LossPath:
    """How `fit` will compute the full-batch loss of this problem (`choose_loss_path`, and
    `choose_classifier_path` for a linear classifier)."""
    rows = data.x.shape[0]
    full_batch = opt.batch_size is None or opt.batch_size >= rows
    if data.network is None and data.family in CLASSIFIERS:
        return choose_classifier_path(data.x.shape, full_batch=full_batch, device=device)
    return choose_loss_path(
        data.x.shape,
        linear=data.network is None and data.family not in CLASSIFIERS,
        full_batch=full_batch,
        epochs=opt.epochs,
        device=device,
    )


def fit(
    data: TrainingData,
    initial: dict[str, float],
    opt: Optimization,
    *,
    device: torch.device,
    hooks: Hooks = Hooks(),  # noqa: B008 - frozen, safe as a default
    loss_path: Optional[LossPath] = None,
) -> TrainResult:
    """Train the model of `data.family` on `device` and return how it ended. `loss_path`
    forces a path for a full-batch linear model (tests, benchmarks); None: `loss_path_of`."""
    model = build_model(data, initial, device)
    x, params = model.x, model.params
    classifier = isinstance(model, ClassifierModel)
    optimizer = make_optimizer(params, opt)
    scheduler = make_scheduler(optimizer, opt)
    batches = MiniBatches(x.shape[0], opt.batch_size, opt.seed, device)
    path = loss_path or loss_path_of(data, opt, device)
    started = time.perf_counter()  # the statistics' one pass counts as training time
    if batches.full:
        model.use_loss_path(path)  # forms the statistics, once, on the statistics path
    elif path != "direct":
        raise ValueError(f"loss path {path!r} is for full-batch linear models only")
    records = EpochRecords(
        max(1, min(hooks.chunk_epochs, opt.epochs)),
        mean_batch_losses=None if batches.full else batches.mean_batch_losses,
    )
    has_val = model.validation is not None
    has_accuracy = has_val and classifier and data.task != "regression"
    recorded, initial = recorded_parameters(model, initial)
    history = History(
        initial, opt, has_val=has_val, has_accuracy=has_accuracy, on_chunk=hooks.on_chunk
    )
    group = optimizer.param_groups[0]
    lr = group["lr"]  # changed by the scheduler only
    val_loss: Optional[torch.Tensor] = None
    accuracy: Optional[torch.Tensor] = None
    end = EpochEnd(records, history, hooks, opt.epochs)
    for epoch in range(1, opt.epochs + 1):
        if batches.full:
            loss = model.full_loss()
            loss.backward()
            # zero_grad() below sets .grad to None, so keeping these tensors copies nothing.
            grads = [p.grad for p in params]
            optimizer.step()
            zero_grad(params)
        else:
            loss, grads = batches.epoch(model, params, optimizer)
        if has_val:
            with torch.no_grad():
                val_loss = model.validation_loss()
                if isinstance(model, ClassifierModel):
                    accuracy = model.validation_accuracy()
        records.add(lr, loss.detach(), grads, recorded, val_loss, accuracy)
        if scheduler is not None:
            scheduler.step()
            lr = group["lr"]
        if end(epoch):  # the stop rules, every chunk; a stop asked for
            break
    result = history.result(str(device), time.perf_counter() - started, path)
    return with_final_weights(model, result)


def recorded_parameters(
    model: LinearModel | ClassifierModel, initial: dict[str, float]
) -> tuple[list[torch.Tensor], dict[str, float]]:
    """The parameters recorded every epoch and the initial values named in the records: all of
    them, or none for a large network (it records scalars only, its weights once at the end)."""
    if isinstance(model, NetworkModel):
        return model.recorded, dict(initial) if model.names else {}
    return model.params, initial


def with_final_weights(model: LinearModel | ClassifierModel, result: TrainResult) -> TrainResult:
    """`result` with a large network's weights as trained (its records named none)."""
    if isinstance(model, NetworkModel) and not model.names:
        return replace(result, final_params=model.final_values())
    return result
