"""A model file against the heads of its config (``unetsl.nets.unet`` builds the heads)."""

from __future__ import annotations

from pathlib import Path

import keras

from unetsl.config.model_config import Config
from unetsl.data.targets import head_factors
from unetsl.errors import UnetslError


def check_model_heads(model: keras.Model, config: Config, source: Path | str) -> None:
    """Heads that make their own targets (from the label bits) must be the model file's
    outputs: same names, order and output shapes, since their targets are made at those
    shapes. Heads that take the data source's target (plain U-Nets, cascades) follow the
    model file instead (training warns when "n labels" differs)."""
    heads = config.heads()
    if not any(head.own_target for head in heads):
        return
    names = list(model.output_names)
    wanted = [h.name for h in heads]
    hint = (f"; rebuild it with create_model -c {config.path} (or remove {source} and "
            "train_model builds it)")
    if names != wanted:
        raise UnetslError(f"{source}: outputs {', '.join(names)} do not match the heads of "
                          f"{config.path} ({', '.join(wanted)}){hint}")
    _, z, y, x, _ = (int(s) if s is not None else 0 for s in model.inputs[0].shape)
    for head, output in zip(heads, model.outputs):
        f = head_factors(config["pooling"], head.depth, z=z)
        expected = (z // f[0], y // f[1], x // f[2], head.n_labels)
        got = tuple(int(s) for s in output.shape[1:])
        if got != expected:
            raise UnetslError(f'{source}: output "{head.name}" has shape {got} but head '
                              f'"{head.name}" of {config.path} wants {expected} (z, y, x, '
                              f"n_labels){hint}")
