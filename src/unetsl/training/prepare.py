"""One training run resolved once from the config: :func:`prepare_training` as named steps
(devices, starting model, batches, compile, logs, callbacks) -> :class:`TrainingSetup`."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import keras

from unetsl.config.heads import Head
from unetsl.config.model_config import Config
from unetsl.data.dataset import make_datasets
from unetsl.data.dataset_options import DatasetOptions
from unetsl.data.normalize import InputNormalization, attach_normalization
from unetsl.data.targets import check_training_labels, training_targets
from unetsl.errors import UnetslError
from unetsl.nets.devices import distribution_strategy, gpus_wanted, set_deterministic
from unetsl.nets.heads import check_model_heads
from unetsl.nets.precision import PrecisionChoice, choose_precision, with_precision
from unetsl.nets.precision_check import (
    decide_precision,
    model_training_check,
    without_amx_3d_training,
)
from unetsl.nets.shapes import model_patch_shape
from unetsl.training import multiworker
from unetsl.training.callbacks import EpochLine, LearningWatch, SamplePredictor
from unetsl.training.checkpoints import (
    Checkpointer,
    TrainingState,
    monitor_mode,
    restore_optimizer_state,
)
from unetsl.training.fine_tune import fine_tuning_config, tuned_paths, tuning_start
from unetsl.training.logs import BatchLog, EpochLog, LogFiles, log_files, new_run_id, write_snapshot
from unetsl.training.setup import (
    TrainingPaths,
    TrainingSetup,
    check_training_config,
    compile_model,
    first_batch_check,
    load_or_build,
    progress_mode,
    resolve_monitor,
    sample_paths,
    starting_point,
    training_paths,
)

log = logging.getLogger("unetsl")

__all__ = ["prepare_training", "training_precision"]


def training_precision(setting: str, strategy: Any, model: keras.Model,
                       cfg: Config) -> PrecisionChoice:
    """The dtype policy training computes in: a reduced one only after the start-up check
    shows that copies of ``model`` itself, compiled with ``cfg``'s losses, train like float32
    on this machine (``unetsl.nets.precision_check``: the kernels its layer shapes select are
    the ones that matter). Several workers take float32 under "auto": a check per node could
    choose differently, and every worker must compute the same steps."""
    choice = choose_precision(setting)
    if choice.automatic and choice.policy != "float32" and multiworker.is_multiworker(strategy):
        choice = PrecisionChoice("float32", f"{choice.policy} proposed ({choice.reason}), but "
                                 "several workers train in float32 so that all compute alike; "
                                 'set "precision" to choose', True)
    choice = without_amx_3d_training(choice, model)

    def compile_copy(copy: keras.Model) -> None:  # the run's losses, the check's own rate
        compile_model(copy, cfg, optimizer=keras.optimizers.Adam(1e-3))

    run = model_training_check(model, compile_copy, int(cfg["batch size"]))
    return decide_precision(setting, "training", choice=choice, run=run)


def prepare_training(cfg: Config, *, resume: bool = False, gpus: int | None = None,
                     progress: str = "auto", datasets: tuple[Any, Any] | None = None,
                     strategy: Any = None, data_options: dict[str, Any] | None = None,
                     stream: TextIO | None = None,
                     extra_callbacks: Sequence[keras.callbacks.Callback] = (),
                     notes: Sequence[str] = (),
                     start_from: str | os.PathLike | None = None) -> TrainingSetup:
    """Everything one training run of ``cfg`` needs, in the order train() always took it:
    checks, devices, the starting model and state, the batches, compile, the log files
    (opened: the caller closes ``epoch_log`` and ``batch_log``) and the callbacks.

    The arguments are those of :func:`unetsl.training.train.train`; ``start_from`` (a model
    file) makes it a fine-tuning run (:mod:`unetsl.training.fine_tune`). The dataset gets plain
    values (:class:`unetsl.data.dataset_options.DatasetOptions`), never the config.
    """
    mode = progress_mode(progress)
    if strategy is None:  # several workers (srun, TF_CONFIG): before TensorFlow starts
        strategy = multiworker.cluster_strategy()
    if start_from is not None:  # fine-tuning: its schedule, its own output files
        cfg = fine_tuning_config(cfg)
    check_training_config(cfg)
    if datasets is None and not cfg["data sources"]:
        raise UnetslError(f'{cfg.path}: no "data sources"; add training data with '
                          f"attach_data_sources -c {cfg.path}")
    samples = sample_paths(cfg)
    paths = training_paths(cfg) if start_from is None else tuned_paths(cfg)
    epochs, batch_size = int(cfg["epochs"]), int(cfg["batch size"])
    strategy, chief = _devices(cfg, gpus, strategy, batch_size)
    if not chief:
        mode = "none"  # the chief reports progress
    source, state = (starting_point(paths, resume) if start_from is None
                     else tuning_start(paths, start_from, resume))
    if state is not None and state.epochs_done >= epochs:
        log.info(f"{paths.latest} has already trained {state.epochs_done} of {epochs} "
                 '"epochs"; raise "epochs" to train on')
        return TrainingSetup(cfg.name, paths, paths, chief, source, state, epochs)

    start = _starting_model(cfg, source, strategy, chief)
    train_data, val_data = _batches(cfg, start, datasets, data_options, batch_size)
    monitor = _compiled(cfg, start.model, train_data, val_data, strategy,
                        resumed=state is not None and source == paths.latest, paths=paths)
    state = _monitored(state or TrainingState(), monitor,
                       float(cfg.get("monitor smoothing") or 0.0))
    if hasattr(train_data, "epoch"):
        train_data.epoch = state.epochs_done  # resumed runs continue the shuffling sequence

    # only the chief writes into the model's folder; other workers take the same steps
    # (collective operations must match) with their files in a scratch folder
    out = paths if chief else multiworker.scratch_paths(paths, strategy)
    logs = _open_logs(cfg, out, state, source, paths, notes, batch_size)
    checkpointer = Checkpointer(
        state, out.latest, out.best, batch_snapshot=out.batch_snapshot,
        early_stopping_patience=cfg.get("early stopping patience") or 0,
        reduce_lr_patience=cfg.get("reduce lr patience") or 0,
        reduce_lr_factor=cfg.get("reduce lr factor") or 0.1,
    )
    predictor, callbacks = _callbacks(cfg, logs, checkpointer, samples, out, state, mode,
                                      epochs, train_data, val_data, stream, extra_callbacks)
    log.info(f"training {source.name}: {_epoch_plan(train_data, batch_size)}, "
             f"{len(val_data) if val_data is not None else 0} validation batches; epochs "
             f"{state.epochs_done + 1}..{epochs}; best by {_judged_by(monitor, state.smoothing)}")
    log.info(f"logs: {logs.files.epoch_log.name}, {logs.files.batch_log.name}")
    return TrainingSetup(
        cfg.name, paths, out, chief, source, state, epochs, batch_size=batch_size,
        heads=start.heads, model=start.model, patch_shape=tuple(start.patch_shape),
        train_data=train_data, val_data=val_data, monitor=monitor,
        verbose=1 if mode == "bar" else 0, run_id=logs.run_id, files=logs.files,
        epoch_log=logs.epoch_log, batch_log=logs.batch_log, checkpointer=checkpointer,
        predictor=predictor, callbacks=tuple(callbacks))


# ------------------------------------------------------------------------------ steps


@dataclass
class _Start:
    """The model a run starts from, and what its heads and labels need."""

    model: keras.Model
    heads: tuple[Head, ...]
    targets: Any  # per-head targets (``unetsl.data.targets``), or None
    n_labels: int
    patch_shape: tuple[int, ...]


@dataclass
class _Logs:
    run_id: str
    files: LogFiles
    epoch_log: EpochLog
    batch_log: BatchLog


def _devices(cfg: Config, gpus: int | None, strategy: Any, batch_size: int) -> tuple[Any, bool]:
    """Seeds, the strategy (one device, several GPUs, several workers) and whether this
    process is the chief; the batch must split evenly over the replicas."""

    set_deterministic(cfg["seed"])
    if strategy is None:
        strategy = distribution_strategy(gpus_wanted(gpus, bool(cfg["multi-gpu"])))
    replicas = int(strategy.num_replicas_in_sync)
    if batch_size % replicas:
        raise UnetslError(f'"batch size" {batch_size} cannot be split evenly over '
                          f"{replicas} devices; use a multiple of {replicas}")
    return strategy, multiworker.is_chief(strategy)


def _starting_model(cfg: Config, source: Any, strategy: Any, chief: bool) -> _Start:
    """The starting model in the checked precision, its normalisation recorded, checked
    against the config's heads (whose targets it needs)."""

    with strategy.scope():
        built = load_or_build(cfg, source, save=chief)
    precision = training_precision(cfg["precision"], strategy, built, cfg)
    log.info(f"precision: {precision.policy} ({precision.reason})")
    with strategy.scope():
        model = with_precision(built, precision.policy)
    # the model is trained on inputs normalised as cfg says; every file it is saved to says so
    attach_normalization(model, InputNormalization.from_settings(cfg))
    patch_shape = model_patch_shape(model)
    n_labels = int(model.outputs[-1].shape[-1])
    check_model_heads(model, cfg, source)
    heads = tuple(cfg.heads())
    targets = training_targets(list(heads), cfg["pooling"])
    if targets is not None:  # each head makes its target from the raw label
        n_labels = targets.source_channels
    elif cfg["n labels"] != n_labels:
        log.warning(f'{cfg.path}: "n labels" is {cfg["n labels"]} but {source.name} has '
                    f"{n_labels} output channels; training the model as it is")
    if tuple(cfg["input shape"]) != patch_shape:
        log.warning(f'{cfg.path}: "input shape" is {cfg["input shape"]} but {source.name} '
                    f"takes {list(patch_shape)}; using the model's")
    return _Start(model, heads, targets, n_labels, patch_shape)


def _batches(cfg: Config, start: _Start, datasets: tuple[Any, Any] | None,
             data_options: dict[str, Any] | None, batch_size: int) -> tuple[Any, Any]:
    """The training and validation batches (made from the config unless given), checked."""

    if datasets is None:

        datasets = make_datasets(DatasetOptions.from_config(cfg),
                                 patch_shape=start.patch_shape, n_labels=start.n_labels,
                                 output_names=list(start.model.output_names),
                                 batch_size=batch_size, seed=cfg["seed"],
                                 targets=start.targets, **(data_options or {}))
    train_data, val_data = datasets
    if val_data is not None and len(val_data) == 0:
        val_data = None
    if len(train_data) == 0:
        raise UnetslError(f"{cfg.path}: the data sources give no training patches")
    check_training_labels(getattr(train_data, "volumes", []), start.targets, start.n_labels,
                          str(cfg.path))
    return train_data, val_data


def _compiled(cfg: Config, model: keras.Model, train_data: Any, val_data: Any,
              strategy: Any, *, resumed: bool, paths: TrainingPaths) -> str:
    """Compile (with the optimizer's state when resuming from -latest); the monitor."""

    weighted = first_batch_check(train_data, model)
    monitor = resolve_monitor(cfg, list(model.output_names), val_data is not None)
    with strategy.scope():
        compile_model(model, cfg, weighted=weighted)
        if resumed:
            restore_optimizer_state(model, paths.latest)
    multiworker.prepare_model(model, strategy)
    return monitor


def _monitored(state: TrainingState, monitor: str, smoothing: float) -> TrainingState:
    """A changed "monitor" or "monitor smoothing" starts the best value afresh."""
    if (state.monitor != monitor or state.mode != monitor_mode(monitor)
            or state.smoothing != smoothing):
        if state.best is not None:
            log.info(f'"monitor" changed from {_judged_by(state.monitor, state.smoothing)} to '
                     f"{_judged_by(monitor, smoothing)}: best value reset")
        state.monitor, state.mode = monitor, monitor_mode(monitor)
        state.smoothing, state.smoothed = smoothing, None
        state.best = state.best_epoch = None
        state.wait = state.plateau_wait = 0
    return state


def _judged_by(monitor: str, smoothing: float) -> str:
    return f"{monitor} (moving average, {smoothing:g})" if smoothing else monitor


def _epoch_plan(train_data: Any, batch_size: int) -> str:
    """What an epoch is, for the start line: a sweep of the data or a fixed number of draws."""
    fixed = getattr(train_data, "patches_per_epoch", None)
    what = ("one sweep of the training patches" if not fixed else
            f'"patches per epoch" {fixed} of {len(train_data.items)} training patches')
    return f"{len(train_data)} batches of {batch_size} patch(es) per epoch ({what})"


def _open_logs(cfg: Config, out: TrainingPaths, state: TrainingState, source: Any,
               paths: TrainingPaths, notes: Sequence[str], batch_size: int) -> _Logs:
    """A new run id, the config snapshot, and the epoch and batch logs (opened)."""
    folder = out.model.parent
    run_id = new_run_id(folder, cfg.name)
    files = log_files(folder, cfg.name, run_id)
    write_snapshot(files.snapshot, cfg.to_json())
    previous = state.run_ids[-1] if state.run_ids else None
    state.run_ids.append(run_id)
    comments = list(notes)
    if source == paths.latest:
        comments.append(f"resumed: {source.name} at epoch {state.epochs_done}"
                        + (f" (run {previous})" if previous else ""))
    epoch_log = EpochLog(files.epoch_log, source.name if source.parent == folder else source,
                         comments=comments)
    return _Logs(run_id, files, epoch_log,
                 BatchLog(files.batch_log, state, batch_size=batch_size))


def _callbacks(cfg: Config, logs: _Logs, checkpointer: Checkpointer, samples: list,
               out: TrainingPaths, state: TrainingState, mode: str, epochs: int,
               train_data: Any, val_data: Any, stream: TextIO | None,
               extra: Sequence[keras.callbacks.Callback]) -> tuple[Any, list]:
    """(the sample predictor or None, every callback in the order they must run)."""

    predictor = None
    callbacks: list[keras.callbacks.Callback] = [logs.batch_log, logs.epoch_log, checkpointer]
    if samples:
        predictor = SamplePredictor(samples, out.predictions, cfg.name,
                                    initial=state.epochs_done == 0)
        callbacks.append(predictor)
    if mode == "lines":  # after the checkpointer (the best so far), before warnings
        callbacks.append(EpochLine(epochs, len(train_data), state, stream))
    # a sparse channel (vertices) may take a third of a short run to appear: judge F1 then
    callbacks.append(LearningWatch(train_data[0][0], validation=val_data is not None,
                                   patience=max(3, epochs // 3), settings=cfg))
    callbacks.extend(extra)
    return predictor, callbacks
