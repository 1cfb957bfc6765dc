"""What a training run needs before it starts: config checks, shapes, the compiled model,
paths, the starting point, and :class:`TrainingSetup`, the whole run resolved once (by
:func:`unetsl.training.prepare.prepare_training`), so that ``train.train`` only fits,
resumes and stops."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from unetsl.config.heads import Head
from unetsl.config.model_config import Config
from unetsl.data.sources import parse_source, resolve_path
from unetsl.data.targets import check_head_sources, training_targets
from unetsl.errors import UnetslError
from unetsl.nets.losses import LOSSES, get_loss, get_optimizer
from unetsl.nets.model_files import load_model, save_model
from unetsl.nets.shapes import model_patch_shape, output_activations
from unetsl.nets.unet import build_model
from unetsl.training.checkpoints import Checkpointer, TrainingState, read_state
from unetsl.training.logs import (
    BatchLog,
    EpochLog,
    LogFiles,
    expected_log_keys,
    is_channel_score,
)
from unetsl.training.metrics import VoxelWeightedLoss, compile_metrics

log = logging.getLogger("unetsl")

PROGRESS_MODES = ("auto", "bar", "lines", "none")


# ------------------------------------------------------------------------------ checks


def check_training_config(cfg: Config) -> None:
    """The config's keys and the names train() resolves (loss, optimizer); UnetslError if bad.

    Cheap (no data, no model), so the CLI runs it before saving an edited config.
    """

    cfg.validate()
    heads = cfg.heads()
    if any(head.own_target for head in heads):  # one loss per head, raw labels in the sources
        where = getattr(cfg, "_where", str(cfg.path))
        for head in heads:
            if head.loss not in LOSSES:
                raise UnetslError(f'{where}: training: "loss function" of head "{head.name}": '
                                  f'{json.dumps(head.loss)} is unknown; valid names: '
                                  + ", ".join(LOSSES))
        sources = [parse_source(e, i, cfg.folder) for i, e in enumerate(cfg["data sources"])]
        check_head_sources(sources, where)
    for name in dict.fromkeys(head.loss for head in heads):
        get_loss(name)
    get_optimizer(cfg["optimizer"], cfg["initial learning rate"])


def training_shapes(cfg: Config) -> tuple[list[int], int]:
    """The patch shape (c, z, y, x) and label channels that training of ``cfg`` uses: the
    model file's when it exists (it wins over "input shape"), else the config's; heads that
    make their own targets take the raw label (``HeadTargets.source_channels``)."""

    patch_shape, n_labels = [int(n) for n in cfg["input shape"]], int(cfg["n labels"])
    if Path(cfg.model_path).exists():
        model = load_model(cfg.model_path)
        patch_shape = [int(n) for n in model_patch_shape(model)]
        n_labels = int(model.outputs[-1].shape[-1])
    targets = training_targets(cfg.heads(), cfg["pooling"])
    if targets is not None:
        n_labels = targets.source_channels
    return patch_shape, n_labels


def sample_paths(cfg: Config) -> list[Path]:
    """"samples to predict" as paths ($VARS and ~ expanded, relative to the config folder)."""

    paths = []
    for text in cfg["samples to predict"]:
        path = resolve_path(text, cfg.folder, where=f'{cfg.path}: "samples to predict" ')
        if not path.is_file():
            raise UnetslError(f'{cfg.path}: "samples to predict" file {text!r} not found '
                              f"(looked for {path})")
        paths.append(path)
    return paths


def first_batch_check(dataset: Any, model: keras.Model) -> bool:
    """Check one batch against the model; True when batches carry sample weights."""
    batch = dataset[0]
    x, y = batch[0], batch[1]
    want = tuple(int(s) for s in model.inputs[0].shape[1:])
    if tuple(np.shape(x)[1:]) != want:
        raise UnetslError(f"training batches have patches of shape {tuple(np.shape(x)[1:])} "
                          f"(z, y, x, c) but the model takes {want}")
    shapes = {name: tuple(int(s) for s in out.shape[1:])
              for name, out in zip(model.output_names, model.outputs)}
    targets = y.items() if isinstance(y, dict) else [(model.output_names[-1], y)]
    for name, target in targets:
        if name not in shapes:
            raise UnetslError(f"training targets for {name!r} but the model has no such output "
                              f"(outputs: {', '.join(shapes)})")
        got, wanted = tuple(np.shape(target)[1:]), shapes[name]
        if got[-1] != wanted[-1]:
            raise UnetslError(f"training targets have {got[-1]} channels but the model has "
                              f'{wanted[-1]} outputs ("n labels")')
        if got != wanted:
            raise UnetslError(f"training targets of output {name} have shape {got} "
                              f"(z, y, x, n) but the model gives {wanted}")
    return len(batch) > 2 and batch[2] is not None


def resolve_monitor(cfg: Config, output_names: Sequence[str], validation: bool) -> str:
    monitor = cfg.get("monitor") or "val_loss"
    if monitor.startswith("val_") and not validation:
        log.info(f'no validation data: "monitor" {monitor} falls back to {monitor[4:]}')
        monitor = monitor[4:]
    known = expected_log_keys(output_names, validation)
    if monitor not in known and not is_channel_score(monitor):
        raise UnetslError(f'"monitor" {monitor!r} is not logged by this model; '
                          f"choose one of {', '.join(known)}")
    return monitor


# ------------------------------------------------------------------------------ compile


def compile_model(model: keras.Model, cfg: Config, *, weighted: bool = False,
                  optimizer: keras.optimizers.Optimizer | None = None) -> None:
    """Compile with the config's optimizer, learning rate, each head's loss and loss weight
    (``cfg.heads(model.output_names)``: a plain config's heads follow the model's outputs),
    and the metrics.

    weighted : batches carry (batch, z, y, x) voxel weights; the loss is wrapped so that
        they apply (:class:`unetsl.training.metrics.VoxelWeightedLoss`).
    A model with one output gets one loss; loss weights apply to several outputs, when the
    heads have them.
    """

    names = list(model.output_names)
    heads = {head.name: head for head in cfg.heads(names)}

    def loss(output: str) -> keras.losses.Loss:
        if output not in heads:
            raise UnetslError(f'{cfg.path}: "loss function" has no entry for model output '
                              f'"{output}"')
        inner = get_loss(heads[output].loss)
        return VoxelWeightedLoss(inner) if weighted else inner

    losses: Any = loss(names[0]) if len(names) == 1 else {name: loss(name) for name in names}
    weights = [heads[name].loss_weight for name in names]
    loss_weights = ({name: float(1 if w is None else w) for name, w in zip(names, weights)}
                    if len(names) > 1 and any(w is not None for w in weights) else None)
    if optimizer is None:
        optimizer = get_optimizer(cfg["optimizer"], cfg["initial learning rate"])
    model.compile(optimizer=optimizer, loss=losses, loss_weights=loss_weights,
                  metrics=compile_metrics(names, output_activations(model),
                                          [int(t.shape[-1]) for t in model.outputs]))


# ------------------------------------------------------------------------------ one run


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


@dataclass(frozen=True)
class TrainingSetup:
    """One training run, resolved once from the config by :func:`prepare_training`.

    paths : the model's files; out : where this worker writes them (``paths`` on the chief,
    a scratch folder on the other workers of a multi-worker run). source : the model file
    the run starts from. state : where the training stands (the checkpointer updates it).
    When the checkpoint has already trained ``epochs`` (``finished``), only name, paths,
    out, chief, source, state and epochs are set.
    """

    name: str
    paths: TrainingPaths
    out: TrainingPaths
    chief: bool
    source: Path
    state: TrainingState
    epochs: int
    batch_size: int = 0
    heads: tuple[Head, ...] = ()
    model: keras.Model | None = None
    patch_shape: tuple[int, ...] = ()
    train_data: Any = None
    val_data: Any = None
    monitor: str = ""
    verbose: int = 0
    run_id: str | None = None
    files: LogFiles | None = None
    epoch_log: EpochLog | None = None
    batch_log: BatchLog | None = None
    checkpointer: Checkpointer | None = None
    predictor: Any = None  # callbacks.SamplePredictor when there are "samples to predict"
    callbacks: tuple[keras.callbacks.Callback, ...] = ()

    @property
    def finished(self) -> bool:
        """Nothing left to train: the checkpoint has done ``epochs`` already."""
        return self.model is None

    @property
    def initial_epoch(self) -> int:
        return self.state.epochs_done


def load_or_build(cfg: Config, source: Path, *, save: bool = True) -> keras.Model:

    if source.exists():
        return load_model(source)
    log.info(f"model file {source} does not exist: building it from {cfg.path}")
    model = build_model(cfg)
    if save:  # not on the other workers of a multi-worker training: the chief writes it
        save_model(model, source)
    return model


def starting_point(paths: TrainingPaths, resume: bool) -> tuple[Path, TrainingState | None]:
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


def progress_mode(progress: str) -> str:
    if progress not in PROGRESS_MODES:
        raise UnetslError(f"progress must be one of {', '.join(PROGRESS_MODES)}, got {progress!r}")
    if progress == "auto":
        return "bar" if sys.stdout.isatty() else "lines"
    return progress
