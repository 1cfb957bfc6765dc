"""Checkpoints: atomic -latest/-best files with the training state, resume, signals."""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
from pathlib import Path

import keras
import numpy as np
import pytest

from unetsl.errors import UnetslError
from unetsl.nets import model_files
from unetsl.nets.model_files import load_model
from unetsl.nets.unet import build_unet
from unetsl.training import checkpoints
from unetsl.training.checkpoints import (
    Checkpointer,
    InterruptCheck,
    SignalGuard,
    TrainingInterrupted,
    TrainingState,
    is_better,
    monitor_mode,
    read_state,
    restore_optimizer_state,
    save_checkpoint,
)


@pytest.fixture(scope="module")
def model() -> keras.Model:
    """A tiny compiled U-Net (1 channel, 16 x 16 patches)."""
    keras.utils.set_random_seed(0)
    net = build_unet((1, 1, 16, 16), n_labels=1, depth=2, n_filters=2,
                     spatial_dropout_rate=0.0)
    net.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    return net


def _weights(net: keras.Model) -> list[np.ndarray]:
    return [np.asarray(w) for w in net.get_weights()]


def _leftovers(folder: Path) -> list[str]:
    """Temporary files atomic_path would leave behind (hidden .<stem>-* names)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ----------------------------------------------------------------------- state and rules


def test_state_json_round_trip_ignores_unknown_keys():
    state = TrainingState(monitor="val_accuracy", mode="max", epochs_done=3, batches_done=42,
                          best=0.75, best_epoch=1, wait=2, plateau_wait=1,
                          run_ids=["a", "b"], interrupted=True)
    assert TrainingState.from_json(state.to_json()) == state
    text = state.to_json()[:-1] + ', "from a newer version": 1}'
    assert TrainingState.from_json(text) == state
    assert TrainingState.from_json('{"epochs_done": 5}') == TrainingState(epochs_done=5)


def test_monitor_mode_and_is_better():
    assert monitor_mode("val_accuracy") == "max" and monitor_mode("cascade_0_accuracy") == "max"
    assert monitor_mode("val_loss") == "min" and monitor_mode("loss") == "min"
    assert is_better(0.5, None, "min") and is_better(0.5, None, "max")
    assert is_better(0.4, 0.5, "min") and not is_better(0.5, 0.5, "min")
    assert not is_better(0.6, 0.5, "min")
    assert is_better(0.6, 0.5, "max") and not is_better(0.4, 0.5, "max")
    for bad in (math.nan, math.inf, -math.inf, None):
        assert not is_better(bad, None, "min") and not is_better(bad, 1.0, "min")


# --------------------------------------------------------------------------------- files


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_checkpoint_holds_model_and_state(tmp_path, model, suffix):
    state = TrainingState(epochs_done=4, batches_done=40, best=0.25, best_epoch=2, wait=1,
                          run_ids=["run-1"])
    path = save_checkpoint(model, tmp_path / f"m-latest{suffix}", state)
    assert path == tmp_path / f"m-latest{suffix}"
    assert read_state(path) == state
    again = load_model(path)
    for a, b in zip(_weights(model), _weights(again)):
        np.testing.assert_array_equal(a, b)
    assert _leftovers(tmp_path) == []
    # overwriting replaces the state as a whole
    newer = TrainingState(epochs_done=5, run_ids=["run-1", "run-2"])
    save_checkpoint(model, path, newer)
    assert read_state(path) == newer
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_model_without_state_reads_none(tmp_path, model, suffix):
    model_files.save_model(model, tmp_path / f"plain{suffix}")
    assert read_state(tmp_path / f"plain{suffix}") is None
    save_checkpoint(model, tmp_path / f"nostate{suffix}")
    assert read_state(tmp_path / f"nostate{suffix}") is None


@pytest.mark.parametrize("name", ["junk.h5", "junk.keras"])
def test_unreadable_state_is_one_line(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"not a model\nat all\n")
    with pytest.raises(UnetslError, match="is not a model file") as err:
        read_state(path)
    assert "\n" not in str(err.value) and name in str(err.value)
    with pytest.raises(UnetslError):
        read_state(tmp_path / "missing.h5")


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_failing_model_write_leaves_previous_checkpoint(tmp_path, model, monkeypatch, suffix):
    path = tmp_path / f"m-latest{suffix}"
    old = TrainingState(epochs_done=1)
    save_checkpoint(model, path, old)
    before = path.read_bytes()

    def half_written(net, target):
        Path(target).write_bytes(b"partial model bytes")  # then the disk fills up
        raise OSError("No space left on device")

    monkeypatch.setattr(checkpoints, "save_model", half_written)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(model, path, TrainingState(epochs_done=2))
    assert path.read_bytes() == before
    assert read_state(path) == old
    assert _leftovers(tmp_path) == []


def test_failing_state_write_leaves_previous_checkpoint(tmp_path, model, monkeypatch):
    path = tmp_path / "m-best.h5"
    old = TrainingState(epochs_done=3, best=0.1, best_epoch=2)
    save_checkpoint(model, path, old)
    before = path.read_bytes()

    def broken(target, name, text):
        raise KeyboardInterrupt  # Ctrl-C after the model, before the state

    monkeypatch.setattr(checkpoints, "write_record", broken)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(model, path, TrainingState(epochs_done=4))
    assert path.read_bytes() == before
    assert read_state(path) == old
    load_model(path)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_optimizer_state_is_restored_for_resume(tmp_path, suffix):
    net = build_unet((1, 1, 16, 16), n_labels=1, depth=2, n_filters=2, spatial_dropout_rate=0.0)
    net.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    net.optimizer.build(net.trainable_variables)
    for k, variable in enumerate(net.optimizer.variables):  # as if trained: distinct values
        variable.assign(np.full(variable.shape, k + 1, dtype=variable.dtype))
    path = save_checkpoint(net, tmp_path / f"m-latest{suffix}", TrainingState(epochs_done=7))
    again = load_model(path)
    again.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    assert restore_optimizer_state(again, path) is True
    saved, restored = net.optimizer.variables, again.optimizer.variables
    assert len(saved) == len(restored) > 2
    for a, b in zip(saved, restored):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a), err_msg=a.path)
    assert read_state(path).epochs_done == 7


def test_optimizer_state_missing_gives_false(tmp_path, model, caplog):
    fresh = build_unet((1, 1, 16, 16), n_labels=1, depth=2, n_filters=2,
                       spatial_dropout_rate=0.0)
    model_files.save_model(fresh, tmp_path / "uncompiled.h5")  # no optimizer in the file
    again = load_model(tmp_path / "uncompiled.h5")
    again.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    with caplog.at_level(logging.WARNING, logger="unetsl"):
        assert restore_optimizer_state(again, tmp_path / "uncompiled.h5") is False
    assert "no optimizer state saved" in caplog.text


def test_optimizer_state_of_another_optimizer_is_refused(tmp_path, caplog):
    net = build_unet((1, 1, 16, 16), n_labels=1, depth=2, n_filters=2, spatial_dropout_rate=0.0)
    net.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    net.optimizer.build(net.trainable_variables)  # Adam's moments exist, as after a fit
    save_checkpoint(net, tmp_path / "adam.h5", TrainingState(epochs_done=1))
    again = load_model(tmp_path / "adam.h5")
    again.compile(optimizer=keras.optimizers.SGD(0.5, momentum=0.9), loss="mse")
    with caplog.at_level(logging.WARNING, logger="unetsl"):
        assert restore_optimizer_state(again, tmp_path / "adam.h5") is False
    assert "does not fit SGD" in caplog.text
    assert float(keras.ops.convert_to_numpy(again.optimizer.learning_rate)) == \
        pytest.approx(0.5)  # left as it was


# ---------------------------------------------------------------------------- Checkpointer


def _checkpointer(tmp_path, model, **kwargs) -> tuple[Checkpointer, TrainingState, list]:
    state = TrainingState(monitor=kwargs.pop("monitor", "val_loss"))
    state.mode = monitor_mode(state.monitor)
    calls: list = []
    cb = Checkpointer(state, tmp_path / "m-latest.h5", tmp_path / "m-best.h5",
                      on_best=lambda epoch, value: calls.append((epoch, value)), **kwargs)
    cb.set_model(model)
    return cb, state, calls


def test_epoch_end_writes_best_only_on_improvement(tmp_path, model):
    cb, state, calls = _checkpointer(tmp_path, model)
    cb.on_epoch_end(0, {"val_loss": 0.5, "loss": 0.9})
    assert cb.improved and calls == [(0, 0.5)]
    assert read_state(tmp_path / "m-best.h5").best == 0.5
    latest = read_state(tmp_path / "m-latest.h5")
    assert (latest.epochs_done, latest.best, latest.best_epoch, latest.wait) == (1, 0.5, 0, 0)
    best_bytes = (tmp_path / "m-best.h5").read_bytes()

    cb.on_epoch_end(1, {"val_loss": 0.7})  # worse: best file untouched
    assert not cb.improved and calls == [(0, 0.5)]
    assert (tmp_path / "m-best.h5").read_bytes() == best_bytes
    latest = read_state(tmp_path / "m-latest.h5")
    assert (latest.epochs_done, latest.best, latest.wait, latest.plateau_wait) == (2, 0.5, 1, 1)

    cb.on_epoch_end(2, {"val_loss": float("nan")})  # NaN never counts as better
    assert not cb.improved and read_state(tmp_path / "m-latest.h5").wait == 2

    cb.on_epoch_end(3, {"val_loss": 0.25})
    assert calls[-1] == (3, 0.25)
    best = read_state(tmp_path / "m-best.h5")
    assert (best.best, best.best_epoch, best.epochs_done, best.wait) == (0.25, 3, 4, 0)
    assert state.epochs_done == 4 and not state.interrupted
    assert _leftovers(tmp_path) == []


def test_accuracy_monitor_prefers_larger_values(tmp_path, model):
    cb, state, calls = _checkpointer(tmp_path, model, monitor="val_accuracy")
    assert state.mode == "max"
    cb.on_epoch_end(0, {"val_accuracy": 0.6})
    cb.on_epoch_end(1, {"val_accuracy": 0.5})
    cb.on_epoch_end(2, {"val_accuracy": 0.8})
    assert calls == [(0, 0.6), (2, 0.8)]
    assert read_state(tmp_path / "m-best.h5").best == pytest.approx(0.8)


def test_missing_monitor_writes_latest_but_no_best(tmp_path, model, caplog):
    cb, state, calls = _checkpointer(tmp_path, model)
    with caplog.at_level(logging.WARNING, logger="unetsl"):
        cb.on_epoch_end(0, {"loss": 0.3})
    assert "'val_loss' is not in the epoch logs" in caplog.text
    assert not (tmp_path / "m-best.h5").exists() and calls == []
    assert read_state(tmp_path / "m-latest.h5").epochs_done == 1


def test_early_stopping_after_patience(tmp_path, model):
    cb, state, _ = _checkpointer(tmp_path, model, early_stopping_patience=2)
    model.stop_training = False
    cb.on_epoch_end(0, {"val_loss": 1.0})
    cb.on_epoch_end(1, {"val_loss": 1.5})
    assert not cb.stopped_early and not model.stop_training
    cb.on_epoch_end(2, {"val_loss": 1.2})
    assert cb.stopped_early and model.stop_training
    assert read_state(tmp_path / "m-latest.h5").wait == 2  # saved after the decision
    model.stop_training = False


def test_reduce_learning_rate_on_plateau_keeps_counting_in_state(tmp_path):
    net = build_unet((1, 1, 16, 16), n_labels=1, depth=2, n_filters=2, spatial_dropout_rate=0.0)
    net.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    cb, state, _ = _checkpointer(tmp_path, net, reduce_lr_patience=2, reduce_lr_factor=0.5)

    def rate() -> float:
        return float(keras.ops.convert_to_numpy(net.optimizer.learning_rate))

    cb.on_epoch_end(0, {"val_loss": 1.0})
    cb.on_epoch_end(1, {"val_loss": 1.0})
    assert rate() == pytest.approx(0.01) and state.plateau_wait == 1
    cb.on_epoch_end(2, {"val_loss": 2.0})
    assert rate() == pytest.approx(0.005)
    assert state.plateau_wait == 0 and state.wait == 2  # early-stopping count goes on
    cb.on_epoch_end(3, {"val_loss": 3.0})
    cb.on_epoch_end(4, {"val_loss": 3.0})
    assert rate() == pytest.approx(0.0025)
    # a resumed run starts from the stored counters
    resumed = read_state(tmp_path / "m-latest.h5")
    assert (resumed.epochs_done, resumed.wait, resumed.plateau_wait) == (5, 4, 0)


# ------------------------------------------------------------------------------- signals


def test_first_signal_sets_the_flag_and_interrupt_check_raises():
    guard = SignalGuard()
    check = InterruptCheck(guard)
    with guard:
        check.on_train_batch_end(0)  # nothing received: nothing happens
        os.kill(os.getpid(), signal.SIGTERM)
        assert guard.received == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGTERM)  # a second SIGTERM is ignored while saving
        assert guard.received == signal.SIGTERM
        with pytest.raises(TrainingInterrupted, match="interrupted by SIGTERM") as err:
            check.on_train_batch_end(3)
        assert err.value.signum == signal.SIGTERM
        with pytest.raises(TrainingInterrupted):
            check.on_epoch_end(0)


def test_second_ctrl_c_gives_up_and_handlers_are_restored():
    before = {s: signal.getsignal(s) for s in SignalGuard.SIGNALS}
    with SignalGuard() as guard:
        assert signal.getsignal(signal.SIGINT) == guard._handle
        os.kill(os.getpid(), signal.SIGINT)
        assert guard.received == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert {s: signal.getsignal(s) for s in SignalGuard.SIGNALS} == before


def test_guard_outside_the_main_thread_installs_nothing():
    before = signal.getsignal(signal.SIGTERM)
    seen: list = []

    def work():
        with SignalGuard() as guard:
            seen.append((signal.getsignal(signal.SIGTERM), guard.received))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert seen == [(before, None)]
