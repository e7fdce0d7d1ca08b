"""SIGINT and SIGTERM during training: the epoch ends, every epoch so far is handed on, and the
run stops as `cancelled`; outside `stop_on_signals` the handlers are the ones before."""

from __future__ import annotations

import os
import signal
import threading

import pytest
import torch

from gdflow.data.dataset import load_toy
from gdflow.runs.signals import requested_signal, stop_on_signals, stop_requested
from gdflow.training.loop import Hooks, fit
from gdflow.training.model import TrainingData
from gdflow.training.optimization import Optimization
from gdflow.training.records import EpochChunk

CPU = torch.device("cpu")


def _epochs(chunks: list[EpochChunk]) -> list[int]:
    return [int(e) for c in chunks for e in c.epochs]


def _toy_fit(epochs: int, should_stop, chunks: list[EpochChunk]):  # type: ignore[no-untyped-def]
    data = load_toy("float32")
    return fit(
        TrainingData(data.x, data.y),
        {"w": 1.0},
        Optimization(lr=0.01, epochs=epochs),
        device=CPU,
        hooks=Hooks(on_chunk=chunks.append, should_stop=should_stop),
    )


def test_a_stop_request_ends_training_after_the_epoch_with_every_epoch_handed_on() -> None:
    asked: list[int] = []

    def should_stop() -> str | None:
        asked.append(1)
        return "SIGTERM" if len(asked) >= 37 else None

    chunks: list[EpochChunk] = []
    result = _toy_fit(100, should_stop, chunks)
    whole: list[EpochChunk] = []
    reference = _toy_fit(100, None, whole)
    assert result.stop_reason == "cancelled"
    assert result.epochs_done == 37 and _epochs(chunks) == list(range(1, 38))
    assert result.verdict_detail == "stopped by SIGTERM after epoch 37"
    assert chunks[0].losses.tolist() == whole[0].losses[:37].tolist()  # same numbers as ever
    assert reference.stop_reason == "max_epochs"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_training_stops_it_cleanly(signum: signal.Signals) -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    chunks: list[EpochChunk] = []
    sender = threading.Timer(0.5, os.kill, args=(os.getpid(), signum))
    with stop_on_signals():
        sender.start()
        result = _toy_fit(10_000_000, stop_requested, chunks)
    sender.join()
    assert result.stop_reason == "cancelled"
    assert 0 < result.epochs_done < 10_000_000
    assert _epochs(chunks) == list(range(1, result.epochs_done + 1))
    assert requested_signal() is signum
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_a_second_signal_falls_back_to_the_previous_handler() -> None:
    with pytest.raises(KeyboardInterrupt):
        with stop_on_signals():
            os.kill(os.getpid(), signal.SIGINT)  # asks to stop
            assert stop_requested() == "SIGINT"
            os.kill(os.getpid(), signal.SIGINT)  # Python's own: KeyboardInterrupt
            threading.Event().wait(1)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
