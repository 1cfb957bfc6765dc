"""Models as U-Net features plus heads: plain U-Nets, cascades, multi-head models.

:func:`build_heads` builds every model from a list of :class:`unetsl.config.heads.Head`
(``unetsl.nets.build.build_model`` takes them from a config); a plain U-Net is the one head
"output", a cascade one STAGE head per U-Net of its chain, a multi-head model LEVEL heads on
the decoder levels of one U-Net. ``HEAD_KINDS`` says how each kind of head is built.

The topology follows the original ActiveUnetSegmentation (ellisdg 3DUnetCNN design) so that
layer names, and therefore weight transfer by name, stay compatible. Models are channels-last
(set per layer, never globally) because channels-first 3D convolutions have no CPU kernels.

Axis conventions: config shapes are (c, z, y, x); model tensors are (batch, z, y, x, c).
Every model takes and returns 5-D tensors, also when it is built from 2-D layers (z == 1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import keras
from keras import layers

from unetsl.config.heads import LEVEL, STAGE, Head
from unetsl.config.model_config import Config
from unetsl.data.normalize import InputNormalization, attach_normalization
from unetsl.errors import UnetslError
from unetsl.nets.shapes import _int_tuple, _positive_int, check_patch_divisible

__all__ = [
    "HEAD_KINDS",
    "build_cascade",
    "build_heads",
    "build_model",
    "build_unet",
    "check_patch_divisible",
    "stage_heads",
]

_DATA_FORMAT = "channels_last"


class _Ops:
    """The layer family for one dimensionality: 3-D, or 2-D when the patch has z == 1."""

    def __init__(self, two_d: bool, kernel_shape: tuple[int, ...], pooling: tuple[int, ...]):
        self.two_d = two_d
        if two_d:
            self.conv, self.pool, self.up = layers.Conv2D, layers.MaxPooling2D, layers.UpSampling2D
            self.dropout = layers.SpatialDropout2D
            self.kernel, self.pooling, self.head = kernel_shape[1:], pooling[1:], (1, 1)
        else:
            self.conv, self.pool, self.up = layers.Conv3D, layers.MaxPooling3D, layers.UpSampling3D
            self.dropout = layers.SpatialDropout3D
            self.kernel, self.pooling, self.head = kernel_shape, pooling, (1, 1, 1)


def _check_args(
    input_shape: Sequence[int],
    heads: Sequence[Head],
    depth: int,
    n_filters: int,
    kernel_shape: Sequence[int],
    pooling: Sequence[int],
    spatial_dropout_rate: float,
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    shape = _int_tuple(input_shape, 4, "input shape")
    kernel = _int_tuple(kernel_shape, 3, "kernel shape")
    pool = _int_tuple(pooling, 3, "pooling")
    for head in heads:
        _positive_int(head.n_labels, "n labels")
    _positive_int(n_filters, "n filters")
    check_patch_divisible(shape, pool, depth)
    for head in heads:
        _check_activation(head.activation)
    try:
        rate = float(spatial_dropout_rate)
    except (TypeError, ValueError):
        rate = -1.0
    if not 0.0 <= rate < 1.0:
        raise UnetslError(f'"spatial dropout rate" must be in [0, 1), got {spatial_dropout_rate!r}')
    return shape, kernel, pool


def _check_activation(activation: str) -> None:
    if not isinstance(activation, str):
        raise UnetslError(f'"activation" must be a Keras activation name, got {activation!r}')
    try:
        keras.activations.get(activation)
    except ValueError:
        raise UnetslError(
            f'"activation" {activation!r} is not a Keras activation (sigmoid, softmax, relu, '
            "linear, ...)"
        ) from None


def _hidden_conv(x, lo: _Ops, filters: int, name: str, batch_normalization: bool):
    """kernel-shaped, same-padded ReLU conv; with BN the ReLU moves after the normalisation."""
    if not batch_normalization:
        return lo.conv(
            filters,
            lo.kernel,
            padding="same",
            activation="relu",
            data_format=_DATA_FORMAT,
            name=name,
        )(x)
    x = lo.conv(filters, lo.kernel, padding="same", data_format=_DATA_FORMAT, name=name)(x)
    x = layers.BatchNormalization(axis=-1, name=f"{name}-bn")(x)
    return layers.Activation("relu", name=f"{name}-relu")(x)


@dataclass
class _Stage:
    """One U-Net of a model: its layer family, name prefix, input size and the feature
    tensor of every decoder level (0 = full resolution), as the U-Net's layers give them
    (4-D inside a 2-D U-Net)."""

    lo: _Ops
    prefix: str
    yx: tuple[int, int]
    levels: list


def _unet_features(x, *, prefix: str, depth: int, n_filters: int, kernel: tuple[int, ...],
                   pooling: tuple[int, ...], rate: float, batch_normalization: bool) -> _Stage:
    """The contracting and expanding layers of one U-Net on a 5-D (batch, z, y, x, c) tensor.

    Level d < depth - 1 is the output of ``expansion-b-<d>``, the bottom level that of
    ``contraction-b-<depth-1>`` (after its dropout).
    """
    _, z, y, xs, _ = tuple(x.shape)
    lo = _Ops(z == 1, kernel, pooling)
    if lo.two_d:
        x = layers.Reshape((y, xs, int(x.shape[-1])), name=f"{prefix}to-2d")(x)

    skips = []
    for d in range(depth):
        x = _hidden_conv(x, lo, n_filters * 2**d, f"{prefix}contraction-a-{d}", batch_normalization)
        if rate > 0:
            x = lo.dropout(rate, data_format=_DATA_FORMAT, name=f"{prefix}unetsl-do-ca-{d}")(x)
        x = _hidden_conv(
            x, lo, n_filters * 2 ** (d + 1), f"{prefix}contraction-b-{d}", batch_normalization
        )
        if rate > 0:
            x = lo.dropout(rate, data_format=_DATA_FORMAT, name=f"{prefix}unetsl-do-cb-{d}")(x)
        skips.append(x)
        if d < depth - 1:
            x = lo.pool(pool_size=lo.pooling, data_format=_DATA_FORMAT, name=f"{prefix}pool-{d}")(x)

    levels: list = [None] * depth
    levels[depth - 1] = x
    for d in range(depth - 2, -1, -1):
        x = lo.up(size=lo.pooling, data_format=_DATA_FORMAT, name=f"{prefix}up-{d}")(x)
        x = layers.Concatenate(axis=-1, name=f"{prefix}concat-{d}")([x, skips[d]])
        x = _hidden_conv(
            x, lo, n_filters * 2 ** (d + 1), f"{prefix}expansion-a-{d}", batch_normalization
        )
        x = _hidden_conv(
            x, lo, n_filters * 2 ** (d + 1), f"{prefix}expansion-b-{d}", batch_normalization
        )
        levels[d] = x
    return _Stage(lo, prefix, (y, xs), levels)


def _stage_output(stage: _Stage, head: Head):
    """A :data:`~unetsl.config.heads.STAGE` head: the U-Net's own full-resolution output,
    conv ``<name>-conv`` (a 2-D U-Net reshapes back to 5-D in ``<prefix>to-3d``), then the
    activation layer ``<name>``."""
    lo, (y, xs), n = stage.lo, stage.yx, head.n_labels
    x = lo.conv(n, lo.head, activation="linear", data_format=_DATA_FORMAT,
                name=f"{head.name}-conv")(stage.levels[0])
    if lo.two_d:
        x = layers.Reshape((1, y, xs, n), name=f"{stage.prefix}to-3d")(x)
    # Activation("softmax") normalises over the last (channel) axis.
    return layers.Activation(head.activation, name=head.name)(x)


def _level_output(stage: _Stage, head: Head):
    """A :data:`~unetsl.config.heads.LEVEL` head: a 1x1(x1) conv ``cerberus_<name>`` on
    decoder level ``head.depth`` (a 2-D U-Net reshapes back to 5-D in
    ``cerberus_<name>-3d``), then the activation layer ``<name>``. Its output is
    patch / pooling^depth voxels."""
    x = stage.levels[head.depth]
    if len(x.shape) == 4:  # a 2-D U-Net (z == 1): heads are 2-D, then back to 5-D
        _, y, xs, _ = x.shape
        x = layers.Conv2D(head.n_labels, (1, 1), name=f"cerberus_{head.name}")(x)
        x = layers.Reshape((1, y, xs, head.n_labels), name=f"cerberus_{head.name}-3d")(x)
    else:
        x = layers.Conv3D(head.n_labels, (1, 1, 1), name=f"cerberus_{head.name}")(x)
    return layers.Activation(head.activation, name=head.name)(x)


HEAD_KINDS: dict[str, Callable[[_Stage, Head], Any]] = {STAGE: _stage_output,
                                                        LEVEL: _level_output}
"""How each kind of head (``Head.kind``) is built from its U-Net: the one place a new kind
of output is added (a function (stage, head) -> 5-D output tensor, layer names of its own)."""

_PLACEHOLDER = Head("output", 1, activation="sigmoid", kind=STAGE)
"""The stage output a U-Net without a STAGE head still builds (and leaves out of the model),
as the multi-head builder always did: it keeps the seeded initial weights of the heads."""


def _stages(heads: Sequence[Head]) -> list[list[Head]]:
    """The heads by U-Net: each STAGE head ends a U-Net of the chain; other heads sit on the
    U-Net of the next STAGE head (or of the last one)."""
    groups: list[list[Head]] = []
    current: list[Head] = []
    for head in heads:
        current.append(head)
        if head.kind == STAGE:
            groups.append(current)
            current = []
    if current:
        if groups:
            groups[-1].extend(current)
        else:
            groups.append(current)
    return groups


def build_heads(
    input_shape: Sequence[int],
    heads: Sequence[Head],
    depth: int = 3,
    n_filters: int = 32,
    kernel_shape: Sequence[int] = (3, 3, 3),
    pooling: Sequence[int] = (1, 2, 2),
    spatial_dropout_rate: float = 0.0625,
    batch_normalization: bool = False,
    name: str = "unet",
) -> keras.Model:
    """Every model: U-Net features plus one output per head, in head order.

    input_shape : (c, z, y, x) patch, as the config's "input shape"; z == 1 builds 2-D layers
        (kernel_shape[1:], pooling[1:]) wrapped in Reshape layers so the model stays 5-D.
    The U-Nets form a chain (one per STAGE head, :func:`_stages`): the first sees the input,
    U-Net k > 0 sees concat(input, output of U-Net k-1), its layer names prefixed
    ``cascade<k>-`` (so a trained U-Net's weights load into the first by name). Each head is
    built by ``HEAD_KINDS[head.kind]``. One STAGE head alone (the plain U-Net) gives a model
    with one output tensor, anything else a list of outputs; a model with LEVEL heads takes
    a one-element input list, as the original's multi-head files do.
    """
    heads = list(heads)
    if not heads:
        raise UnetslError("a model needs at least one head")
    for head in heads:
        if head.kind not in HEAD_KINDS:
            raise UnetslError(f'head "{head.name}": unknown kind {head.kind!r}; known: '
                              + ", ".join(HEAD_KINDS))
    shape, kernel, pool = _check_args(input_shape, heads, depth, n_filters, kernel_shape,
                                      pooling, spatial_dropout_rate)
    c, z, y, x = shape
    inputs = keras.Input(shape=(z, y, x, c), name="input")
    outputs: dict[str, Any] = {}
    previous = None
    for k, group in enumerate(_stages(heads)):
        prefix = "" if k == 0 else f"cascade{k}-"
        stage_input = inputs
        if previous is not None:
            stage_input = layers.Concatenate(axis=-1, name=f"{prefix}input")([inputs, previous])
        stage = _unet_features(stage_input, prefix=prefix, depth=depth, n_filters=n_filters,
                               kernel=kernel, pooling=pool, rate=float(spatial_dropout_rate),
                               batch_normalization=batch_normalization)
        end = next((h for h in group if h.kind == STAGE), _PLACEHOLDER)
        previous = _stage_output(stage, end)
        if end is not _PLACEHOLDER:
            outputs[end.name] = previous
        for head in group:
            if head is not end:
                outputs[head.name] = HEAD_KINDS[head.kind](stage, head)
    made = [outputs[h.name] for h in heads]
    if len(heads) == 1 and heads[0].kind == STAGE:
        return keras.Model(inputs, made[0], name=name)
    if any(h.kind == LEVEL for h in heads):
        return keras.Model([inputs], made, name=name)
    return keras.Model(inputs, made, name=name)


def build_model(config: Config) -> keras.Model:
    """The untrained model of a config, plain, cascade or multi-head alike: the config's
    heads (``config.heads()``) on its U-Net ("input shape", "depth", "n filters", "kernel
    shape", "pooling", "spatial dropout rate", "batch normalization"), named after the
    config, with its input normalisation recorded on it; with "seed", the same initial
    weights every time."""

    if config.get("seed") is not None:
        keras.utils.set_random_seed(int(config["seed"]))
    model = build_heads(config["input shape"], config.heads(), depth=config["depth"],
                        n_filters=config["n filters"], kernel_shape=config["kernel shape"],
                        pooling=config["pooling"],
                        spatial_dropout_rate=config["spatial dropout rate"],
                        batch_normalization=config["batch normalization"], name=config.name)
    return attach_normalization(model, InputNormalization.from_settings(config))


def stage_heads(n_stages: int, n_labels: int = 1, activation: str = "sigmoid") -> list[Head]:
    """The heads of a plain U-Net (``n_stages`` 0: one head "output") or of a cascade of
    ``n_stages`` U-Nets (heads ``cascade_0`` .. ``cascade_<N-1>``), all alike."""
    names = ["output"] if n_stages == 0 else [f"cascade_{k}" for k in range(n_stages)]
    return [Head(name, n_labels, activation=activation, kind=STAGE) for name in names]


def build_unet(
    input_shape: Sequence[int],
    n_labels: int = 1,
    depth: int = 3,
    n_filters: int = 32,
    kernel_shape: Sequence[int] = (3, 3, 3),
    pooling: Sequence[int] = (1, 2, 2),
    activation: str = "sigmoid",
    spatial_dropout_rate: float = 0.0625,
    batch_normalization: bool = False,
    name: str = "unet",
) -> keras.Model:
    """The original's U-Net, channels-last: :func:`build_heads` with the one head "output".

    Returns a model (batch, z, y, x, c) -> (batch, z, y, x, n_labels). The head conv is
    ``output-conv`` and the activation layer (the model output) is ``output``.
    """
    return build_heads(input_shape, stage_heads(0, n_labels, activation), depth, n_filters,
                       kernel_shape, pooling, spatial_dropout_rate, batch_normalization, name)


def build_cascade(
    input_shape: Sequence[int],
    n_stages: int,
    n_labels: int = 1,
    depth: int = 3,
    n_filters: int = 32,
    kernel_shape: Sequence[int] = (3, 3, 3),
    pooling: Sequence[int] = (1, 2, 2),
    activation: str = "sigmoid",
    spatial_dropout_rate: float = 0.0625,
    batch_normalization: bool = False,
    name: str = "cascade",
) -> keras.Model:
    """``n_stages`` full-resolution U-Nets in a chain, each refining the previous one.

    Stage 0 sees the input; stage k > 0 sees concat(input, output of stage k-1). Every stage
    ends in ``n_labels`` channels with the same activation; outputs are the activation layers
    ``cascade_0`` .. ``cascade_<N-1>``, all meant to be trained on the same target.
    Stage 0 keeps the plain U-Net layer names (so a trained U-Net's weights load into it by
    name); stage k > 0 prefixes them with ``cascade<k>-``. The head conv of stage k is
    ``cascade_<k>-conv``.
    """
    n_stages = _positive_int(n_stages, "n stages")
    return build_heads(input_shape, stage_heads(n_stages, n_labels, activation), depth,
                       n_filters, kernel_shape, pooling, spatial_dropout_rate,
                       batch_normalization, name)
