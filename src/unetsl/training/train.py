"""Training a model on its config's data sources: ``train(cfg)`` (the library side of train_model).

What a run does, in order (the original's steps, with its defects fixed):

1. load ``<name>.h5`` (built from the config when missing), or with ``resume`` the latest
   checkpoint ``<name>-latest.h5`` with its optimiser state, best value and epoch count;
2. build the training/validation batches (:mod:`unetsl.data.dataset`) for the model's patch shape;
3. compile with "optimizer", "initial learning rate", "loss function" (one per output) and
   the metrics ``accuracy`` and ``binary_accuracy`` (:mod:`unetsl.training.metrics`);
4. write the config snapshot and, as it trains, the epoch and batch logs
   (:mod:`unetsl.training.logs`), ``<name>-best.h5`` when the monitored value improves and
   ``<name>-latest.h5`` every epoch (:mod:`unetsl.training.checkpoints`), and the predictions of
   "samples to predict" after every epoch;
5. on SIGINT/SIGTERM save ``<name>-latest.h5`` after the current batch and return;
6. draw the training curves into ``<name>-curves.png``.

Every config trains the same way through its heads (``cfg.heads()``): the model is built by
``unetsl.nets.unet.build_model``; heads that make their own targets (the original's
multi-head files) get them from the label bit fields (``unetsl.data.targets.HeadTargets``) and
must match the model file; each head has its own "loss function" and "loss weights".

Steps 1-4 are resolved once, before the first epoch, by
:func:`unetsl.training.prepare.prepare_training` (a :class:`~unetsl.training.setup.TrainingSetup`:
model, heads, batches, paths, callbacks, epochs, monitor), as are several GPUs
(``devices.distribution_strategy``) and a fixed "seed" (deterministic ops); ``train`` is the
fit/resume/interrupt loop over it. Nothing here prints menus or exits; errors are UnetslError.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import keras

from unetsl.config.model_config import Config
from unetsl.errors import UnetslError
from unetsl.training import multiworker
from unetsl.training.checkpoints import (
    InterruptCheck,
    SignalGuard,
    TrainingInterrupted,
    save_checkpoint,
)
from unetsl.training.logs import log_files, plot_curves
from unetsl.training.prepare import prepare_training
from unetsl.training.setup import (
    PROGRESS_MODES,
    TrainingPaths,
    TrainingSetup,
    check_training_config,
    compile_model,
    training_paths,
)

log = logging.getLogger("unetsl")

__all__ = ["PROGRESS_MODES", "TrainingResult", "check_training_config", "compile_model",
           "train", "training_paths"]


@dataclass
class TrainingResult:
    """What a call of :func:`train` did."""

    epochs_done: int
    epochs: int
    monitor: str
    best: float | None
    best_epoch: int | None
    paths: TrainingPaths
    run_id: str | None = None
    epoch_log: Path | None = None
    batch_log: Path | None = None
    snapshot: Path | None = None
    curves: Path | None = None
    stopped_early: bool = False
    interrupted: int | None = None  # the signal number when SIGINT/SIGTERM stopped training
    predictions: list[Path] = field(default_factory=list)


# -------------------------------------------------------------------------------- train


def train(cfg: Config, *, resume: bool = False, gpus: int | None = None, progress: str = "auto",
          datasets: tuple[Any, Any] | None = None, strategy: Any = None,
          data_options: dict[str, Any] | None = None, stream: TextIO | None = None,
          extra_callbacks: Sequence[keras.callbacks.Callback] = (),
          notes: Sequence[str] = (), start_from: str | os.PathLike | None = None
          ) -> TrainingResult:
    """Train the model of ``cfg`` (a :class:`~unetsl.config.Config`) on its data sources.

    resume : continue from ``<name>-latest.h5`` (optimiser state, best value, epoch count);
        without it a new training starts from ``<name>.h5``.
    gpus : GPUs wanted (--gpus / GPUS); None = 1, or all visible ones with "multi-gpu".
    progress : "bar" (Keras progress bar), "lines" (one line per epoch), "none", or "auto"
        (bar on a terminal, lines otherwise).
    datasets : (train, validation) Keras datasets instead of the config's data sources.
    strategy : a tf.distribute strategy instead of the one ``gpus`` gives. Default: a
        multi-worker strategy under srun or TF_CONFIG (``unetsl.training.multiworker``), else
        ``devices.distribution_strategy``.
    data_options : ``workers``, ``use_multiprocessing``, ``max_queue_size`` for the batches.
    notes : comment lines for the epoch log (train_model: the -D values of this run).
    start_from : a model file to fine-tune (train_model --from): its weights, the
        fine-tuning schedule, output ``<name>-tuned-best.h5`` (:mod:`unetsl.training.fine_tune`).
    extra_callbacks : more Keras callbacks, e.g. a GUI's loss curves, or
        ``InterruptCheck(StopRequest())`` for a stop button (saves -latest, as Ctrl-C does).
    Returns a :class:`TrainingResult`; ``interrupted`` is set when a signal stopped it.
    """
    setup = prepare_training(cfg, resume=resume, gpus=gpus, progress=progress,
                             datasets=datasets, strategy=strategy, data_options=data_options,
                             stream=stream, extra_callbacks=extra_callbacks, notes=notes,
                             start_from=start_from)
    state = setup.state
    if setup.finished:
        return TrainingResult(state.epochs_done, setup.epochs, state.monitor, state.best,
                              state.best_epoch, setup.paths)
    result = _fit(setup)
    if not setup.chief:

        multiworker.remove_scratch(setup.out)
        return result
    folder = setup.out.model.parent
    logs = [log_files(folder, setup.name, rid).epoch_log for rid in state.run_ids]
    try:
        result.curves = plot_curves(logs, setup.paths.curves, title=setup.name)
    except Exception as exc:  # a plotting problem must not lose a finished training
        log.warning(f"could not draw {setup.paths.curves}: {exc}")
    return result


def _fit(setup: TrainingSetup) -> TrainingResult:
    """``model.fit`` from the setup's initial epoch; a signal saves -latest and returns."""
    state, model = setup.state, setup.model
    assert model is not None and setup.files is not None
    assert setup.epoch_log is not None and setup.batch_log is not None
    result = TrainingResult(state.epochs_done, setup.epochs, setup.monitor, state.best,
                            state.best_epoch, setup.paths, run_id=setup.run_id,
                            epoch_log=setup.files.epoch_log, batch_log=setup.files.batch_log,
                            snapshot=setup.files.snapshot)
    try:
        with SignalGuard() as guard:
            callbacks = [*setup.callbacks, InterruptCheck(guard)]
            try:
                # shuffle=False: the batches are shuffled by (seed, epoch) already; Keras'
                # own shuffle draws from Python's random one extra time under a
                # distribution strategy, so the batch order would depend on the devices
                model.fit(setup.train_data, validation_data=setup.val_data,
                          epochs=setup.epochs, initial_epoch=setup.initial_epoch,
                          callbacks=callbacks, verbose=setup.verbose, shuffle=False)
            except TrainingInterrupted as stop:
                state.interrupted = True
                save_checkpoint(model, setup.out.latest, state)
                result.interrupted = stop.signum
            except Exception as exc:
                if type(exc).__name__ != "ResourceExhaustedError":
                    raise
                raise UnetslError(
                    f'out of memory training {setup.source.name} with "batch size" '
                    f"{setup.batch_size} and patches {list(setup.patch_shape)}: use a smaller "
                    '"batch size" (or more GPUs)') from None
    finally:
        setup.epoch_log.close()
        setup.batch_log.close()
    result.epochs_done = state.epochs_done
    result.best, result.best_epoch = state.best, state.best_epoch
    result.stopped_early = setup.checkpointer is not None and setup.checkpointer.stopped_early
    if setup.predictor is not None:
        result.predictions = setup.predictor.written
    return result
