"""What a training run needs before it starts: config checks, label checks, the compiled model."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from unetsl.errors import UnetslError
from unetsl.training.logs import (
    expected_log_keys,
    is_channel_score,
)

log = logging.getLogger("unetsl")


# ------------------------------------------------------------------------------ checks


def check_training_config(cfg: Any) -> None:
    """The config's keys and the names train() resolves (loss, optimizer); UnetslError if bad.

    Cheap (no data, no model), so the CLI runs it before saving an edited config.
    """
    from unetsl.data.sources import parse_source
    from unetsl.data.targets import check_head_sources
    from unetsl.nets.losses import LOSSES, get_loss, get_optimizer

    cfg.validate()
    losses = cfg["loss function"]
    if isinstance(losses, dict):  # one loss per head
        where = getattr(cfg, "_where", str(cfg.path))
        for head, loss in losses.items():
            if loss not in LOSSES:
                raise UnetslError(f'{where}: training: "loss function" of head "{head}": '
                                  f'{json.dumps(loss)} is unknown; valid names: '
                                  + ", ".join(LOSSES))
        sources = [parse_source(e, i, cfg.folder) for i, e in enumerate(cfg["data sources"])]
        check_head_sources(sources, where)
    for name in losses.values() if isinstance(losses, dict) else [losses]:
        get_loss(name)
    get_optimizer(cfg["optimizer"], cfg["initial learning rate"])


def training_shapes(cfg: Any) -> tuple[list[int], int]:
    """The patch shape (c, z, y, x) and label channels that training of ``cfg`` uses: the
    model file's when it exists (it wins over "input shape"), else the config's; a cerberus
    config's sources give the raw label (1 channel), each head makes its own target."""
    from unetsl.config.cerberus_layout import CerberusTraining
    from unetsl.nets.model_files import load_model
    from unetsl.nets.shapes import model_patch_shape

    patch_shape, n_labels = [int(n) for n in cfg["input shape"]], int(cfg["n labels"])
    if Path(cfg.model_path).exists():
        model = load_model(cfg.model_path)
        patch_shape = [int(n) for n in model_patch_shape(model)]
        n_labels = int(model.outputs[-1].shape[-1])
    if isinstance(cfg, CerberusTraining):
        n_labels = 1
    return patch_shape, n_labels


def sample_paths(cfg: Any) -> list[Path]:
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


BIT_LABELLERS = ("multiclass labels", "double membrane labels")


def check_label_bits(volumes: Sequence[Any], n_labels: int) -> None:
    """Bit labels must fit the model: a value with bit k set needs k + 1 output channels.

    The multiclass labellers drop higher bits silently, so a label image meant for more
    classes than "n labels" would train on part of its labels without a word.
    volumes : :class:`unetsl.data.volumes.Volume` objects (label, source.labeller, pair).
    """
    for volume in volumes:
        labeller = getattr(getattr(volume, "source", None), "labeller", None)
        if labeller is None or labeller.name not in BIT_LABELLERS or volume.label.size == 0:
            continue
        top = volume.label.max()
        if top >= 2**n_labels:
            needed = int(top).bit_length()
            raise UnetslError(f"{volume.pair.label}: label value {int(top)} needs {needed} "
                              f'output channels ({labeller.name}) but the model has {n_labels} '
                              '("n labels")')


def _resolve_monitor(cfg: Any, output_names: Sequence[str], validation: bool) -> str:
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


def compile_model(model: keras.Model, cfg: Any, *, weighted: bool = False,
                  optimizer: keras.optimizers.Optimizer | None = None) -> None:
    """Compile with the config's optimizer, learning rate, loss (per output) and metrics.

    weighted : batches carry (batch, z, y, x) voxel weights; the loss is wrapped so that
        they apply (:class:`unetsl.training.metrics.VoxelWeightedLoss`).
    "loss function" is one name for every output, or {output name: name} (cerberus heads);
    "loss weights", when present, is {output name: weight of its loss in the total}.
    """
    from unetsl.nets.losses import get_loss, get_optimizer
    from unetsl.nets.shapes import output_activations
    from unetsl.training.metrics import VoxelWeightedLoss, compile_metrics

    names = list(model.output_names)
    config_losses = cfg["loss function"]

    def loss(output: str) -> keras.losses.Loss:
        name = config_losses
        if isinstance(config_losses, dict):
            if output not in config_losses:
                raise UnetslError(f'{cfg.path}: "loss function" has no entry for model output '
                                  f'"{output}"')
            name = config_losses[output]
        inner = get_loss(name)
        return VoxelWeightedLoss(inner) if weighted else inner

    losses: Any = loss(names[0]) if len(names) == 1 else {name: loss(name) for name in names}
    weights = cfg.get("loss weights")
    loss_weights = ({name: float(weights.get(name, 1)) for name in names}
                    if isinstance(weights, dict) and len(names) > 1 else None)
    if optimizer is None:
        optimizer = get_optimizer(cfg["optimizer"], cfg["initial learning rate"])
    model.compile(optimizer=optimizer, loss=losses, loss_weights=loss_weights,
                  metrics=compile_metrics(names, output_activations(model),
                                          [int(t.shape[-1]) for t in model.outputs]))


