"""What a training run needs before it starts: config checks, shapes, the compiled model."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from unetsl.config.model_config import Config
from unetsl.errors import UnetslError
from unetsl.training.logs import (
    expected_log_keys,
    is_channel_score,
)

log = logging.getLogger("unetsl")


# ------------------------------------------------------------------------------ checks


def check_training_config(cfg: Config) -> None:
    """The config's keys and the names train() resolves (loss, optimizer); UnetslError if bad.

    Cheap (no data, no model), so the CLI runs it before saving an edited config.
    """
    from unetsl.data.sources import parse_source
    from unetsl.data.targets import check_head_sources
    from unetsl.nets.losses import LOSSES, get_loss, get_optimizer

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
    from unetsl.data.targets import training_targets
    from unetsl.nets.model_files import load_model
    from unetsl.nets.shapes import model_patch_shape

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
    from unetsl.data.sources import resolve_path

    paths = []
    for text in cfg["samples to predict"]:
        path = resolve_path(text, cfg.folder, where=f'{cfg.path}: "samples to predict" ')
        if not path.is_file():
            raise UnetslError(f'{cfg.path}: "samples to predict" file {text!r} not found '
                              f"(looked for {path})")
        paths.append(path)
    return paths


def _first_batch_check(dataset: Any, model: keras.Model) -> bool:
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


def _resolve_monitor(cfg: Config, output_names: Sequence[str], validation: bool) -> str:
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
    from unetsl.nets.losses import get_loss, get_optimizer
    from unetsl.nets.shapes import output_activations
    from unetsl.training.metrics import VoxelWeightedLoss, compile_metrics

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
