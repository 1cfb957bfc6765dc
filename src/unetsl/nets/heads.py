"""Multi-head networks: one U-Net whose decoder levels feed one output per head."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unetsl.config.cerberus_layout import CerberusConfig
from unetsl.data.targets import head_factors
from unetsl.errors import UnetslError


def _level_tensor(base, level: int, depth: int):
    """The decoder output at ``level`` (0 = full resolution) of a unetsl U-Net."""
    name = f"expansion-b-{level}" if level < depth - 1 else f"contraction-b-{level}"
    names = {layer.name for layer in base.layers}
    for candidate in (f"{name}-relu", name):  # with batch normalization the ReLU is last
        if candidate in names:
            tensor = base.get_layer(candidate).output
            break
    else:  # pragma: no cover - the U-Net always has these layers
        raise UnetslError(f"cerberus: layer {name} not found")
    if level == depth - 1 and f"unetsl-do-cb-{level}" in names:
        tensor = base.get_layer(f"unetsl-do-cb-{level}").output
    return tensor


def build_cerberus(config: CerberusConfig):
    """The multi-head model of a cerberus config (Keras, channels-last, untrained).

    Input (batch, z, y, x, c); output k (batch, z/p_z^d, y/p_y^d, x/p_x^d, n_labels) for
    head k at level d, p = "pooling". Layer names follow the original: ``cerberus_<name>``
    (1x1 conv), ``<name>`` (activation), so the original's weights transfer by name.
    """
    import keras
    from keras import layers

    from unetsl.nets.unet import build_unet

    unet = config.unet
    seed = (config.data.get("training") or {}).get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool):
        keras.utils.set_random_seed(seed)  # the same initial weights every time
    depth = unet["depth"]
    base = build_unet(unet["input shape"], n_labels=1, depth=depth,
                      n_filters=unet["n filters"], kernel_shape=unet["kernel shape"],
                      pooling=unet["pooling"], activation="sigmoid",
                      spatial_dropout_rate=unet["spatial dropout rate"],
                      batch_normalization=unet["batch normalization"], name=config.name)
    _, z, _, _ = unet["input shape"]
    outputs = []
    for head in config.heads:
        x = _level_tensor(base, head.depth, depth)
        if len(x.shape) == 4:  # a 2-D U-Net (z == 1): heads are 2-D, then back to 5-D
            _, y, xs, _ = x.shape
            x = layers.Conv2D(head.n_labels, (1, 1), name=f"cerberus_{head.name}")(x)
            x = layers.Reshape((1, y, xs, head.n_labels), name=f"cerberus_{head.name}-3d")(x)
        else:
            x = layers.Conv3D(head.n_labels, (1, 1, 1), name=f"cerberus_{head.name}")(x)
        outputs.append(layers.Activation(head.activation, name=head.name)(x))
    from unetsl.data.normalize import InputNormalization, attach_normalization

    training = config.data.get("training")
    return attach_normalization(keras.Model(base.inputs, outputs, name=config.name),
                                InputNormalization.from_settings(
                                    training if isinstance(training, dict) else {}))


def check_cerberus_model(model: Any, config: CerberusConfig, source: Path | str) -> None:
    """The model file must have the config's heads: same names, order and output shapes."""
    names = list(model.output_names)
    wanted = [h.name for h in config.heads]
    hint = (f"; rebuild it with create_model -c {config.path} (or remove {source} and "
            "train_model builds it)")
    if names != wanted:
        raise UnetslError(f"{source}: outputs {', '.join(names)} do not match the heads of "
                          f"{config.path} ({', '.join(wanted)}){hint}")
    _, z, y, x, _ = (int(s) if s is not None else 0 for s in model.inputs[0].shape)
    for head, output in zip(config.heads, model.outputs):
        f = head_factors(config.unet["pooling"], head.depth, z=z)
        expected = (z // f[0], y // f[1], x // f[2], head.n_labels)
        got = tuple(int(s) for s in output.shape[1:])
        if got != expected:
            raise UnetslError(f'{source}: output "{head.name}" has shape {got} but head '
                              f'"{head.name}" of {config.path} wants {expected} (z, y, x, '
                              f"n_labels){hint}")
