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

Several GPUs (``devices.distribution_strategy``) and a fixed "seed" (deterministic ops)
are set up here as well. Nothing here prints menus or exits; errors are UnetslError.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import keras

from unetsl.config.model_config import Config
from unetsl.errors import UnetslError
from unetsl.training.callbacks import EpochLine, LearningWatch, SamplePredictor
from unetsl.training.checkpoints import (
    Checkpointer,
    InterruptCheck,
    SignalGuard,
    TrainingInterrupted,
    TrainingState,
    monitor_mode,
    read_state,
    restore_optimizer_state,
    save_checkpoint,
)
from unetsl.training.logs import (
    BatchLog,
    EpochLog,
    log_files,
    new_run_id,
    plot_curves,
    write_snapshot,
)
from unetsl.training.setup import (
    _first_batch_check,
    _resolve_monitor,
    check_training_config,
    compile_model,
    sample_paths,
)

log = logging.getLogger("unetsl")

__all__ = ["TrainingResult", "check_training_config", "compile_model", "train",
           "training_paths"]

PROGRESS_MODES = ("auto", "bar", "lines", "none")


@dataclass
class TrainingPaths:
    """The files a training of one config writes, all beside the model file."""

    model: Path
    latest: Path
    best: Path
    batch_snapshot: Path
    curves: Path
    predictions: Path


def training_paths(cfg: Config) -> TrainingPaths:
    """``<name>-latest.h5``, ``<name>-best.h5`` ... for the config's model file and suffix."""
    model = Path(cfg.model_path)
    suffix = model.suffix or ".h5"
    return TrainingPaths(
        model=model,
        latest=cfg.sibling(f"-latest{suffix}"),
        best=cfg.sibling(f"-best{suffix}"),
        batch_snapshot=cfg.sibling(f"-batch{suffix}"),
        curves=cfg.sibling("-curves.png"),
        predictions=model.parent / "predictions",
    )


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


def _load_or_build(cfg: Config, source: Path, *, save: bool = True) -> keras.Model:
    from unetsl.nets.model_files import load_model, save_model
    from unetsl.nets.unet import build_model

    if source.exists():
        return load_model(source)
    log.info(f"model file {source} does not exist: building it from {cfg.path}")
    model = build_model(cfg)
    if save:  # not on the other workers of a multi-worker training: the chief writes it
        save_model(model, source)
    return model


def _starting_point(paths: TrainingPaths, resume: bool) -> tuple[Path, TrainingState | None]:
    """The model file to start from and, when resuming, the state saved with it."""
    if not resume:
        if paths.latest.exists():
            log.info(f"starting a new training from {paths.model}; {paths.latest.name} and "
                     f"{paths.best.name} will be replaced (--resume continues instead)")
        return paths.model, None
    if not paths.latest.exists():
        log.warning(f"nothing to resume: {paths.latest} does not exist; starting from "
                    f"{paths.model}")
        return paths.model, None
    state = read_state(paths.latest)
    if state is None:
        log.warning(f"{paths.latest} holds no training state: continuing from its weights at "
                    "epoch 0 with a fresh optimizer")
    return paths.latest, state


def _progress_mode(progress: str) -> str:
    if progress not in PROGRESS_MODES:
        raise UnetslError(f"progress must be one of {', '.join(PROGRESS_MODES)}, got {progress!r}")
    if progress == "auto":
        return "bar" if sys.stdout.isatty() else "lines"
    return progress


def train(cfg: Config, *, resume: bool = False, gpus: int | None = None, progress: str = "auto",
          datasets: tuple[Any, Any] | None = None, strategy: Any = None,
          data_options: dict[str, Any] | None = None, stream: TextIO | None = None,
          extra_callbacks: Sequence[keras.callbacks.Callback] = (),
          notes: Sequence[str] = ()) -> TrainingResult:
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
    extra_callbacks : more Keras callbacks, e.g. a GUI's loss curves, or
        ``InterruptCheck(StopRequest())`` for a stop button (saves -latest, as Ctrl-C does).
    Returns a :class:`TrainingResult`; ``interrupted`` is set when a signal stopped it.
    """
    from unetsl.data.normalize import InputNormalization, attach_normalization
    from unetsl.data.targets import check_training_labels, training_targets
    from unetsl.nets.devices import distribution_strategy, gpus_wanted, set_deterministic
    from unetsl.nets.heads import check_model_heads
    from unetsl.nets.precision import choose_precision, with_precision
    from unetsl.nets.shapes import model_patch_shape
    from unetsl.training import multiworker

    mode = _progress_mode(progress)
    if strategy is None:  # several workers (srun, TF_CONFIG): before TensorFlow starts
        strategy = multiworker.cluster_strategy()
    check_training_config(cfg)
    if datasets is None and not cfg["data sources"]:
        raise UnetslError(f'{cfg.path}: no "data sources"; add training data with '
                          f"attach_data_sources -c {cfg.path}")
    samples = sample_paths(cfg)
    paths = training_paths(cfg)
    set_deterministic(cfg["seed"])
    if strategy is None:
        strategy = distribution_strategy(gpus_wanted(gpus, bool(cfg["multi-gpu"])))
    chief = multiworker.is_chief(strategy)
    if not chief:
        mode = "none"  # the chief reports progress
    replicas = int(strategy.num_replicas_in_sync)
    if cfg["batch size"] % replicas:
        raise UnetslError(f'"batch size" {cfg["batch size"]} cannot be split evenly over '
                          f"{replicas} devices; use a multiple of {replicas}")

    source, state = _starting_point(paths, resume)
    if state is not None and state.epochs_done >= cfg["epochs"]:
        log.info(f"{paths.latest} has already trained {state.epochs_done} of {cfg['epochs']} "
                 '"epochs"; raise "epochs" to train on')
        return TrainingResult(state.epochs_done, cfg["epochs"], state.monitor, state.best,
                              state.best_epoch, paths)

    precision = choose_precision(cfg["precision"])
    log.info(f"precision: {precision.policy} ({precision.reason})")
    with strategy.scope():
        model = with_precision(_load_or_build(cfg, source, save=chief), precision.policy)
    # the model is trained on inputs normalised as cfg says; every file it is saved to says so
    attach_normalization(model, InputNormalization.from_settings(cfg))
    patch_shape = model_patch_shape(model)
    n_labels = int(model.outputs[-1].shape[-1])
    check_model_heads(model, cfg, source)
    targets = training_targets(cfg.heads(), cfg["pooling"])
    if targets is not None:  # each head makes its target from the raw label
        n_labels = targets.source_channels
    elif cfg["n labels"] != n_labels:
        log.warning(f'{cfg.path}: "n labels" is {cfg["n labels"]} but {source.name} has '
                    f"{n_labels} output channels; training the model as it is")
    if tuple(cfg["input shape"]) != patch_shape:
        log.warning(f'{cfg.path}: "input shape" is {cfg["input shape"]} but {source.name} '
                    f"takes {list(patch_shape)}; using the model's")
    output_names = list(model.output_names)

    if datasets is None:
        from unetsl.data.dataset import make_datasets

        datasets = make_datasets(cfg, patch_shape=patch_shape, n_labels=n_labels,
                                 output_names=output_names, batch_size=cfg["batch size"],
                                 seed=cfg["seed"], targets=targets, **(data_options or {}))
    train_data, val_data = datasets
    if val_data is not None and len(val_data) == 0:
        val_data = None
    if len(train_data) == 0:
        raise UnetslError(f"{cfg.path}: the data sources give no training patches")
    check_training_labels(getattr(train_data, "volumes", []), targets, n_labels, str(cfg.path))
    weighted = _first_batch_check(train_data, model)
    monitor = _resolve_monitor(cfg, output_names, val_data is not None)

    with strategy.scope():
        compile_model(model, cfg, weighted=weighted)
        if state is not None and source == paths.latest:
            restore_optimizer_state(model, paths.latest)
    multiworker.prepare_model(model, strategy)
    if state is None:
        state = TrainingState()
    if state.monitor != monitor or state.mode != monitor_mode(monitor):
        if state.best is not None:
            log.info(f'"monitor" changed from {state.monitor} to {monitor}: best value reset')
        state.monitor, state.mode = monitor, monitor_mode(monitor)
        state.best = state.best_epoch = None
        state.wait = state.plateau_wait = 0
    if hasattr(train_data, "epoch"):
        train_data.epoch = state.epochs_done  # resumed runs continue the shuffling sequence

    # only the chief writes into the model's folder; other workers take the same steps
    # (collective operations must match) with their files in a scratch folder
    out = paths if chief else multiworker.scratch_paths(paths, strategy)
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
    batch_log = BatchLog(files.batch_log, state, batch_size=cfg["batch size"])
    checkpointer = Checkpointer(
        state, out.latest, out.best, batch_snapshot=out.batch_snapshot,
        early_stopping_patience=cfg.get("early stopping patience") or 0,
        reduce_lr_patience=cfg.get("reduce lr patience") or 0,
        reduce_lr_factor=cfg.get("reduce lr factor") or 0.1,
    )
    predictor = None
    callbacks: list[keras.callbacks.Callback] = [batch_log, epoch_log, checkpointer]
    if samples:
        predictor = SamplePredictor(samples, out.predictions, cfg.name,
                                    initial=state.epochs_done == 0)
        callbacks.append(predictor)
    if mode == "lines":  # after the checkpointer (the best so far), before warnings
        callbacks.append(EpochLine(cfg["epochs"], len(train_data), state, stream))
    callbacks.append(LearningWatch(train_data[0][0], validation=val_data is not None,
                                   settings=cfg))
    callbacks.extend(extra_callbacks)

    log.info(f"training {source.name}: {len(train_data)} batches of {cfg['batch size']} "
             f"patch(es) per epoch, {len(val_data) if val_data is not None else 0} validation "
             f"batches; epochs {state.epochs_done + 1}..{cfg['epochs']}; best by {monitor}")
    log.info(f"logs: {files.epoch_log.name}, {files.batch_log.name}")

    result = TrainingResult(state.epochs_done, cfg["epochs"], monitor, state.best,
                            state.best_epoch, paths, run_id=run_id, epoch_log=files.epoch_log,
                            batch_log=files.batch_log, snapshot=files.snapshot)
    try:
        with SignalGuard() as guard:
            callbacks.append(InterruptCheck(guard))
            try:
                # shuffle=False: the batches are shuffled by (seed, epoch) already; Keras'
                # own shuffle draws from Python's random one extra time under a
                # distribution strategy, so the batch order would depend on the devices
                model.fit(train_data, validation_data=val_data, epochs=cfg["epochs"],
                          initial_epoch=state.epochs_done, callbacks=callbacks,
                          verbose=1 if mode == "bar" else 0, shuffle=False)
            except TrainingInterrupted as stop:
                state.interrupted = True
                save_checkpoint(model, out.latest, state)
                result.interrupted = stop.signum
            except Exception as exc:
                if type(exc).__name__ != "ResourceExhaustedError":
                    raise
                raise UnetslError(
                    f'out of memory training {source.name} with "batch size" '
                    f'{cfg["batch size"]} and patches {list(patch_shape)}: use a smaller '
                    '"batch size" (or more GPUs)') from None
    finally:
        epoch_log.close()
        batch_log.close()
    result.epochs_done = state.epochs_done
    result.best, result.best_epoch = state.best, state.best_epoch
    result.stopped_early = checkpointer.stopped_early
    if predictor is not None:
        result.predictions = predictor.written
    if not chief:
        multiworker.remove_scratch(out)
        return result
    logs = [log_files(folder, cfg.name, rid).epoch_log for rid in state.run_ids]
    try:
        result.curves = plot_curves(logs, paths.curves, title=cfg.name)
    except Exception as exc:  # a plotting problem must not lose a finished training
        log.warning(f"could not draw {paths.curves}: {exc}")
    return result
