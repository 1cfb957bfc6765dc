"""Model checkpoints during training: latest, best, resume state, and clean interruption.

``<name>-latest.h5`` is written at the end of every epoch and when training is interrupted
(Ctrl-C, or the SIGTERM that Slurm sends at the time limit); ``<name>-best.h5`` whenever the
monitored value improves. Both are full models that ``predict_image`` loads. Each also holds
the optimiser state (Keras writes it into the file) and a small JSON record of the training
(epochs done, best value, patience counters, run ids) so that ``train_model --resume`` goes
on exactly where the run stopped. Every file is written to a temporary name and renamed.

Keras 3 writes the optimiser variables into legacy ``.h5`` files but does not restore them
when loading (it builds the optimiser for no variables), so :func:`restore_optimizer_state`
reads them back itself, by variable path.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import signal
import threading
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np

from unetsl.atomic import atomic_path
from unetsl.errors import UnetslError
from unetsl.nets.model_files import save_model
from unetsl.nets.records import STATE_RECORD, read_record, write_record

log = logging.getLogger("unetsl")

__all__ = [
    "Checkpointer",
    "InterruptCheck",
    "SignalGuard",
    "StopRequest",
    "TrainingInterrupted",
    "TrainingState",
    "is_better",
    "monitor_mode",
    "read_state",
    "restore_optimizer_state",
    "save_checkpoint",
]

BATCH_SNAPSHOT_AT = 5000  # the original wrote <name>-batch.h5 once, at global batch 5000


@dataclass
class TrainingState:
    """Where a training run stands; stored inside every checkpoint it writes.

    epochs_done : completed epochs, i.e. the 0-based index of the next epoch.
    batches_done : training batches so far over all epochs (the batch log's counter).
    best / best_epoch : best monitored value so far and the 0-based epoch that reached it.
    wait : epochs since the best improved (early stopping).
    plateau_wait : epochs since the best improved or the learning rate was last cut.
    run_ids : the run ids (log file names) of every run of this training, oldest first.
    smoothing / smoothed : "monitor smoothing" and the moving average of the monitored value
        so far (what ``best`` is then a value of; None before the first epoch).
    """

    monitor: str = "val_loss"
    mode: str = "min"
    epochs_done: int = 0
    batches_done: int = 0
    best: float | None = None
    best_epoch: int | None = None
    wait: int = 0
    plateau_wait: int = 0
    run_ids: list[str] = field(default_factory=list)
    interrupted: bool = False
    smoothing: float = 0.0
    smoothed: float | None = None

    def judged(self, value: float | None) -> float | None:
        """The figure "best" is chosen on: ``value`` itself, or with "monitor smoothing" m
        its moving average (s = m * s + (1 - m) * value), which this call advances."""
        if value is None or not math.isfinite(value) or not self.smoothing:
            return value
        previous = self.smoothed
        self.smoothed = value if previous is None else (
            self.smoothing * previous + (1 - self.smoothing) * value)
        return self.smoothed

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TrainingState:
        data = json.loads(text)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def monitor_mode(monitor: str) -> str:
    """"max" for accuracies and F1 scores, "min" for losses."""
    return "max" if "accuracy" in monitor or re.search(r"(^|_)f1_\d+$", monitor) else "min"


def is_better(value: float, best: float | None, mode: str) -> bool:
    """True when ``value`` improves on ``best`` (None = nothing yet); NaN never improves."""
    if value is None or not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best if mode == "min" else value > best


# -------------------------------------------------------------------------------- files


def _is_keras_zip(path: Path) -> bool:
    return path.suffix.lower() == ".keras"


def read_state(path: str | os.PathLike) -> TrainingState | None:
    """The training state stored in a checkpoint, or None (e.g. a file create_model wrote)."""
    path = Path(path)
    text = read_record(path, STATE_RECORD)
    if text is None:
        return None
    try:
        return TrainingState.from_json(text)
    except (ValueError, TypeError) as exc:
        raise UnetslError(f"{path}: cannot read the training state ({exc})") from None


def save_checkpoint(model: keras.Model, path: str | os.PathLike,
                    state: TrainingState | None = None) -> Path:
    """Write the full model (weights, compile settings, optimiser state) and the state.

    Atomic: a temporary file beside ``path`` is renamed onto it when complete.
    """

    path = Path(path)
    with atomic_path(path) as tmp:
        save_model(model, tmp)
        if state is not None:
            write_record(tmp, STATE_RECORD, state.to_json())
    return path


def _h5_attr_list(group: h5py.Group, name: str) -> list[str]:
    """Keras splits long attribute lists into name0, name1, ... chunks."""
    if name in group.attrs:
        values = list(group.attrs[name])
    else:
        values, i = [], 0
        while f"{name}{i}" in group.attrs:
            values.extend(group.attrs[f"{name}{i}"])
            i += 1
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _saved_optimizer_values(path: Path) -> tuple[list[str] | None, list[np.ndarray]]:
    """(variable paths or None, values) of the optimiser variables stored in a model file."""
    if _is_keras_zip(path):
        with zipfile.ZipFile(path) as archive, archive.open("model.weights.h5") as fh:
            with h5py.File(io.BytesIO(fh.read()), "r") as f:
                if "optimizer/vars" not in f:
                    return None, []
                group = f["optimizer/vars"]
                return None, [np.asarray(group[str(i)]) for i in range(len(group))]
    with h5py.File(path, "r") as f:
        if "optimizer_weights" not in f:
            return None, []
        group = f["optimizer_weights"]
        names = _h5_attr_list(group, "weight_names")
        return names, [np.asarray(group[name]) for name in names]


def restore_optimizer_state(model: keras.Model, path: str | os.PathLike) -> bool:
    """Load the optimiser variables (step count, moments, learning rate) saved in ``path``.

    ``model`` must be compiled with an optimiser of the same kind. Variables are matched by
    path (e.g. ``adam/contraction-a-0_kernel_momentum``), else by position; shapes must
    agree. Returns False (with a warning) when the file has no usable optimiser state, in
    which case training goes on with a fresh optimiser.
    """
    path = Path(path)
    optimizer = model.optimizer
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    names, values = _saved_optimizer_values(path)
    variables = list(optimizer.variables)
    if not values:
        log.warning(f"{path}: no optimizer state saved; continuing with a fresh optimizer")
        return False
    if names is not None and len(set(names)) == len(names):
        by_name = dict(zip(names, values))
        ordered = [by_name.get(str(v.path)) for v in variables]
        if any(v is None for v in ordered):
            ordered = values if len(values) == len(variables) else []
    else:
        ordered = values if len(values) == len(variables) else []
    if len(ordered) != len(variables) or any(
        tuple(np.shape(a)) != tuple(v.shape) for a, v in zip(ordered, variables)
    ):
        log.warning(f"{path}: its optimizer state does not fit {type(optimizer).__name__} "
                    "(optimizer or model changed?); continuing with a fresh optimizer")
        return False
    for variable, value in zip(variables, ordered):
        variable.assign(np.asarray(value, dtype=variable.dtype))
    return True


# ---------------------------------------------------------------------------- callbacks


class Checkpointer(keras.callbacks.Callback):
    """End of every epoch: best file if the monitored value improved, then the latest file.

    Also applies the optional reduce-on-plateau and early-stopping rules, on the same
    monitored value, with counters kept in the state so that a resumed run continues them.

    on_best(epoch, value) is called after a new best file has been written.
    """

    def __init__(self, state: TrainingState, latest: Path, best: Path, *,
                 batch_snapshot: Path | None = None, early_stopping_patience: int = 0,
                 reduce_lr_patience: int = 0, reduce_lr_factor: float = 0.1,
                 on_best: Callable[[int, float], None] | None = None):
        super().__init__()
        self.state = state
        self.latest = Path(latest)
        self.best = Path(best)
        self.batch_snapshot = batch_snapshot
        self.early_stopping_patience = int(early_stopping_patience)
        self.reduce_lr_patience = int(reduce_lr_patience)
        self.reduce_lr_factor = float(reduce_lr_factor)
        self.on_best = on_best
        self.stopped_early = False
        self.improved = False

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.batch_snapshot is not None and self.state.batches_done == BATCH_SNAPSHOT_AT:
            save_checkpoint(self.model, self.batch_snapshot)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        state = self.state
        value = logs.get(state.monitor)
        value = state.judged(float(value) if value is not None else None)
        state.epochs_done = epoch + 1
        state.interrupted = False
        self.improved = is_better(value, state.best, state.mode)
        if self.improved:
            state.best, state.best_epoch = value, epoch
            state.wait = state.plateau_wait = 0
            save_checkpoint(self.model, self.best, state)
            if self.on_best is not None:
                self.on_best(epoch, value)
        else:
            state.wait += 1
            state.plateau_wait += 1
            if value is None:
                log.warning(f'"monitor" {state.monitor!r} is not in the epoch logs; '
                            "no best model is saved")
        if self.reduce_lr_patience and state.plateau_wait >= self.reduce_lr_patience:
            self._reduce_learning_rate(epoch)
            state.plateau_wait = 0
        if self.early_stopping_patience and state.wait >= self.early_stopping_patience:
            self.stopped_early = True
            self.model.stop_training = True
            log.info(f"early stopping: {state.monitor} has not improved for {state.wait} epochs "
                     f"(best {state.best} at epoch {state.best_epoch})")
        save_checkpoint(self.model, self.latest, state)

    def _reduce_learning_rate(self, epoch: int) -> None:
        optimizer = self.model.optimizer
        old = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        new = old * self.reduce_lr_factor
        optimizer.learning_rate = new
        log.info(f"epoch {epoch}: {self.state.monitor} has not improved for "
                 f"{self.reduce_lr_patience} epochs; learning rate {old:.3g} -> {new:.3g}")


class TrainingInterrupted(Exception):
    """Raised inside ``fit`` (between batches) after SIGINT or SIGTERM."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


class SignalGuard:
    """Turn SIGINT/SIGTERM into a flag that training checks between batches.

    A second Ctrl-C gives up at once (KeyboardInterrupt); a second SIGTERM is ignored
    while the latest model is being saved. Only installs handlers in the main thread.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.received = signum
        log.warning(f"{signal.Signals(signum).name} received: saving the latest model "
                    "after this batch (Ctrl-C again to quit without saving)")

    def __enter__(self) -> SignalGuard:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


class StopRequest:
    """A stop asked for by a program rather than a signal (a GUI's stop button); checked
    by :class:`InterruptCheck` like a :class:`SignalGuard`, so training saves -latest after
    the current batch and returns, as after Ctrl-C."""

    def __init__(self) -> None:
        self.received: int | None = None

    def request(self) -> None:
        """Stop at the next batch boundary (thread-safe: one attribute set)."""
        self.received = signal.SIGINT


class InterruptCheck(keras.callbacks.Callback):
    """Raise TrainingInterrupted at the first batch/epoch boundary after a signal."""

    def __init__(self, guard: SignalGuard | StopRequest):
        super().__init__()
        self.guard = guard

    def _check(self, *args: Any, **kwargs: Any) -> None:
        if self.guard.received is not None:
            raise TrainingInterrupted(self.guard.received)

    on_train_batch_end = _check
    on_test_batch_end = _check
    on_epoch_end = _check
    on_train_begin = _check
