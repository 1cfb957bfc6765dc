"""Heads: the outputs of a model (name, labels, activation, decoder level, bits, resampler,
loss and its weight).

Every model is a list of :class:`Head` on shared U-Net features; the config layouts make the
list (``Config.heads()``: one "output" head, or one head per cascade stage; the cerberus
layout: its ``heads`` section) and ``unetsl.nets.build.build_model`` builds from it. A new
kind of head (another way of turning features into an output) is a new ``kind`` here and
its builder in ``unetsl.nets.unet.HEAD_KINDS``, the one place that says how a kind is built.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from unetsl.config.fields import labeller_index
from unetsl.errors import UnetslError

UNET_KEYS = ("input shape", "kernel shape", "pooling", "depth", "n filters",
             "spatial dropout rate", "batch normalization")
"""Model keys the ``unet`` section may hold (defaults from ``unetsl.config.fields.FIELDS``)."""

ORIGINAL_UNET_KEYS = UNET_KEYS[:-1]
"""The ``unet`` keys the original's default cerberus config wrote ("batch normalization" is
new in unetsl and left out, so a new file looks like the original's)."""

RESAMPLERS = ("max pool", "min pool", "crop")
"""Target resamplers unetsl knows; the original's "region crop"/"shuffle" are not ported."""

HEAD_KEYS = ("name", "n_labels", "bits", "offset", "activation", "depth", "resampler",
             "labeller")

DEFAULT_HEADS: list[dict[str, Any]] = [
    {"name": "distance", "n_labels": 1, "bits": 6, "offset": 2, "activation": "relu",
     "depth": 0, "resampler": "min pool", "labeller": "linear labels"},
    {"name": "membrane-scale", "n_labels": 2, "bits": 2, "offset": 0, "activation": "sigmoid",
     "depth": 1, "resampler": "max pool", "labeller": "multiclass labels"},
    {"name": "membrane-crop", "n_labels": 2, "bits": 2, "offset": 0, "activation": "sigmoid",
     "depth": 0, "resampler": "crop", "labeller": "multiclass labels"},
]
"""The original's three default heads (§5 of the behaviour notes)."""


def _is_int(v: Any, minimum: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= minimum


STAGE = "stage"
"""A head that ends a full U-Net at full resolution (conv ``<name>-conv``): the plain U-Net's
"output" and each cascade stage, the next stage of a chain starting from its output. Its
target is the data source's labeller output (``bits`` None)."""

LEVEL = "level"
"""A head on a decoder level of the U-Net (conv ``cerberus_<name>``), its target made from
the label bits (the original's multi-head layout)."""

HEAD_KINDS = (STAGE, LEVEL)


@dataclass(frozen=True)
class Head:
    """One output of a model and how its training target is made.

    bits, offset : the label bit field the head's own target is made from (with
        ``labeller`` and ``resampler``); ``bits`` None: the data source's labeller makes the
        target from the whole label (plain U-Nets and cascades).
    depth : the decoder level (0 = full resolution).
    loss, loss_weight : the training loss name and its weight in the total (None: no weight
        given, Keras weighs every output 1).
    kind : how the output is built from the U-Net features (:data:`HEAD_KINDS`).
    """

    name: str
    n_labels: int
    bits: int | None = None
    offset: int = 0
    activation: str = "sigmoid"
    depth: int = 0
    resampler: str = "crop"
    labeller: str | None = None
    loss: str | None = None
    loss_weight: float | None = None
    kind: str = LEVEL

    @property
    def own_target(self) -> bool:
        """The head makes its target from its label bits (else the source's labeller)."""
        return self.bits is not None

    @classmethod
    def from_dict(cls, data: Any, *, where: str, index: int, unet_depth: int) -> Head:
        """Check one ``heads`` entry; one-line UnetslError naming the head and key."""
        at = f'{where}: heads[{index}]'
        if not isinstance(data, dict):
            raise UnetslError(f"{at} must be an object {{...}}, got {json.dumps(data)}")
        unknown = sorted(set(data) - set(HEAD_KEYS))
        if unknown:
            raise UnetslError(f'{at}: unknown key "{unknown[0]}"; head keys are '
                              + ", ".join(HEAD_KEYS))
        missing = [k for k in HEAD_KEYS if k not in data and k != "labeller"]
        if missing:
            raise UnetslError(f'{at}: missing key "{missing[0]}"')
        name = data["name"]
        if not isinstance(name, str) or not name.strip() or "/" in name:
            raise UnetslError(f'{at}: "name" must be a non-empty text without "/", got '
                              f"{json.dumps(name)}")
        at = f'{where}: head "{name}"'
        for key, minimum in (("n_labels", 1), ("bits", 1), ("offset", 0), ("depth", 0)):
            if not _is_int(data[key], minimum):
                raise UnetslError(f'{at}: "{key}" must be an integer >= {minimum}, got '
                                  f"{json.dumps(data[key])}")
        if data["bits"] + data["offset"] > 32:
            raise UnetslError(f'{at}: "bits" + "offset" = {data["bits"] + data["offset"]} '
                              "exceeds the 32 bits of a label")
        if data["depth"] > unet_depth - 1:
            raise UnetslError(f'{at}: "depth" {data["depth"]} is out of range: the unet has '
                              f'levels 0 .. {unet_depth - 1} ("depth" {unet_depth})')
        activation = data["activation"]
        _check_activation(activation, at)
        if data["resampler"] not in RESAMPLERS:
            why = (" (the original's experimental resampler is not ported)"
                   if data["resampler"] in ("region crop", "shuffle") else "")
            raise UnetslError(f'{at}: "resampler" {json.dumps(data["resampler"])} is not '
                              "supported" + why + "; use "
                              + ", ".join(f'"{r}"' for r in RESAMPLERS))
        labeller = data.get("labeller") or ("linear labels" if activation == "relu"
                                            else "multiclass labels")
        try:
            labeller_index(labeller)
        except UnetslError as err:
            raise UnetslError(f'{at}: "labeller": {err}') from None
        return cls(name, data["n_labels"], data["bits"], data["offset"], activation,
                   data["depth"], data["resampler"], labeller)

    def as_dict(self) -> dict[str, Any]:
        """The ``heads`` entry of the cerberus layout (loss and kind are not written there)."""
        return {k: getattr(self, k) for k in HEAD_KEYS}


_ACTIVATIONS = frozenset((
    "sigmoid", "softmax", "relu", "linear", "tanh", "elu", "selu", "softplus", "softsign",
    "exponential", "gelu", "silu", "swish", "hard_sigmoid", "leaky_relu", "relu6", "mish",
    "log_softmax"))
"""Keras activation names known without importing Keras (loading a config stays fast)."""


def _check_activation(activation: Any, at: str) -> None:
    if isinstance(activation, str) and activation in _ACTIVATIONS:
        return
    import keras

    ok = isinstance(activation, str) and activation != ""
    if ok:
        try:
            keras.activations.get(activation)
        except ValueError:
            ok = False
    if not ok:
        raise UnetslError(f'{at}: "activation" {json.dumps(activation)} is not a Keras '
                          "activation (sigmoid, softmax, relu, linear, ...)")


def _check_divisible(unet: dict[str, Any], where: str) -> None:
    """Each patch size a multiple of pooling^(depth-1), as ``model.check_patch_divisible``
    checks (z == 1 builds a 2-D U-Net), without importing Keras for it."""
    shape, pooling, depth = unet["input shape"], unet["pooling"], unet["depth"]
    for axis, size, factor in zip("zyx", shape[1:], pooling):
        block = factor ** (depth - 1)
        if (axis != "z" or size != 1) and (size < block or size % block):
            raise UnetslError(
                f'{where}: unet: "input shape" {list(shape)}: {axis} size {size} must be a '
                f'multiple of "pooling" {list(pooling)} ({factor}) to the power ("depth" '
                f"{depth} - 1) = {block}")


