"""Models of the original ActiveUnetSegmentation: Keras-2 HDF5 files, usually channels-first.

The original saved whole models with ``model.save("x.h5")`` under TensorFlow 2 / tf_keras:
the HDF5 file holds the architecture as JSON (attribute ``model_config``), the weights per
layer (group ``model_weights``), and for trained files the compile settings
(``training_config``, with the original's custom loss names) and the optimiser state.
Keras 3 cannot run those files as they are: the layers are channels-first (no CPU kernels
for 3-D convolutions), the losses are unknown functions, and some config fields changed.

:func:`load_legacy_model` rebuilds the same graph layer by layer as a channels-last Keras 3
model (axes of Concatenate / Softmax / BatchNormalization moved with the channels) and copies
the weights by layer name. Convolution kernels need no transposition: Keras stores them as
(kz, ky, kx, in, out) whatever the data format. The JSON is parsed with :mod:`json`, never
evaluated, and layers that carry code (Lambda) are refused.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np

from unetsl.errors import UnetslError
from unetsl.nets.legacy_layers import _Converter, _inbound, _input_layer, _tensor_refs
from unetsl.nets.losses import get_loss, get_optimizer

__all__ = [
    "LEGACY_LOSS_NAMES",
    "LegacyFile",
    "build_legacy_architecture",
    "copy_legacy_weights",
    "describe_legacy",
    "is_legacy_model",
    "legacy_loss",
    "legacy_output_names",
    "load_legacy_model",
    "read_legacy_file",
]

log = logging.getLogger("unetsl")

#: The original's loss function names (as ``training_config`` stores them) -> unetsl names.
LEGACY_LOSS_NAMES: dict[str, str] = {
    "sorensenDiceCoefLoss": "unetsl.model.sorensenDiceCoefLoss",
    "jaccardIndexLoss": "unetsl.model.jaccardIndexLoss",
    "weightedError": "unetsl.model.weightedError",
    "weightedDiceLoss": "unetsl.model.weightedDiceLoss",
    "logMse": "unetsl.model.logMse",
    "categoricalCrossEntropy": "unetsl.model.categoricalCrossEntropy",
    "dice_coefficient": "unetsl.model.weightedError",
    "dice_coefficient_loss": "unetsl.model.sorensenDiceCoefLoss",
    "binary_crossentropy": "keras.losses.binary_crossentropy",
    "mean_squared_error": "keras.losses.mean_squared_error",
    "mse": "keras.losses.mean_squared_error",
    "categorical_crossentropy": "keras.losses.categorical_crossentropy",
    "hinge": "keras.losses.hinge",
}


@dataclass
class LegacyFile:
    """What a Keras-2 HDF5 model file says about itself (no weights loaded).

    model_config : the parsed ``model_config`` JSON (class_name Functional/Model).
    training_config : the parsed ``training_config`` JSON, None for untrained files.
    channels_first : any layer of the model is channels-first.
    """

    path: Path
    keras_version: str
    backend: str
    model_config: dict
    training_config: dict | None
    channels_first: bool

    @property
    def layers(self) -> list[dict]:
        return list(self.model_config.get("config", {}).get("layers", []))


def _attr_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def is_legacy_model(path: str | os.PathLike) -> bool:
    """True for an HDF5 model written by Keras 1/2 (the original), False for Keras 3 files.

    Keras 3 writes ``keras_version`` 3.x; the original (tf.keras / tf_keras) wrote 2.x.
    A file with a channels-first layer is treated as legacy whatever its version, since
    channels-first 3-D layers do not run on a CPU.
    """
    path = Path(path)
    if path.suffix.lower() not in (".h5", ".hdf5") or not path.is_file():
        return False
    try:
        if not h5py.is_hdf5(path):
            return False
        with h5py.File(path, "r") as f:
            version = _attr_text(f.attrs.get("keras_version", ""))
            config = _attr_text(f.attrs.get("model_config", ""))
    except OSError:
        return False
    if not config:
        return False
    if version.startswith(("1.", "2.")):
        return True
    return '"channels_first"' in config


def read_legacy_file(path: str | os.PathLike) -> LegacyFile:
    """Parse the architecture and compile settings of a Keras-2 HDF5 file (json, no eval)."""
    path = Path(path)
    where = f"model file {str(path)!r}"
    try:
        with h5py.File(path, "r") as f:
            version = _attr_text(f.attrs.get("keras_version", "unknown"))
            backend = _attr_text(f.attrs.get("backend", "unknown"))
            raw_model = f.attrs.get("model_config")
            raw_training = f.attrs.get("training_config")
            has_weights = "model_weights" in f
    except OSError as exc:
        raise UnetslError(f"{where} cannot be read: {exc}") from None
    if raw_model is None:
        raise UnetslError(f"{where} holds no model architecture (only weights?)")
    if version.startswith("1."):
        raise UnetslError(f"{where} was written by Keras {version}; only Keras 2 files of the "
                          "original are supported")
    if not has_weights:
        raise UnetslError(f"{where} holds no 'model_weights' group")
    try:
        model_config = json.loads(_attr_text(raw_model))
        training_config = json.loads(_attr_text(raw_training)) if raw_training is not None \
            else None
    except json.JSONDecodeError as exc:
        raise UnetslError(f"{where}: malformed model_config JSON ({exc.msg})") from None
    if not isinstance(model_config, dict) or "config" not in model_config:
        raise UnetslError(f"{where}: model_config is not a Keras model description")
    if model_config.get("class_name") not in ("Functional", "Model"):
        raise UnetslError(f"{where}: a {model_config.get('class_name')!r} model cannot be "
                          "converted; only functional models (as the original wrote) can")
    formats = {
        layer.get("config", {}).get("data_format")
        for layer in model_config["config"].get("layers", [])
    } - {None}
    if len(formats) > 1:
        raise UnetslError(f"{where} mixes channels_first and channels_last layers; cannot "
                          "convert it")
    return LegacyFile(path=path, keras_version=version, backend=backend,
                      model_config=model_config, training_config=training_config,
                      channels_first="channels_first" in formats)


# --------------------------------------------------------------------------------------------
def build_legacy_architecture(legacy: LegacyFile) -> keras.Model:
    """The channels-last Keras 3 model with the file's layers and names, untrained."""
    cv = _Converter(legacy)
    where = cv.where
    tensors: dict[str, Any] = {}
    pending = legacy.layers
    for entry in pending:
        name = entry.get("config", {}).get("name", entry.get("name"))
        if entry.get("class_name") == "InputLayer":
            tensors[name] = _input_layer(cv, entry)
            continue
        if entry.get("class_name") in ("Functional", "Model", "Sequential"):
            raise UnetslError(f"{where}: layer {name!r} is a nested model (a multi-GPU "
                              "wrapper?); save the inner model and load that instead")
        refs = _inbound(entry, where)
        inputs = []
        for ref_name, node_index, tensor_index in refs:
            if ref_name not in tensors or node_index != 0 or tensor_index != 0:
                raise UnetslError(f"{where}: layer {name!r} refers to {ref_name!r} "
                                  f"[{node_index}, {tensor_index}], which is not available")
            inputs.append(tensors[ref_name])
        tensors[name] = cv.build(entry, inputs)
    cfg = legacy.model_config["config"]
    inputs = [tensors[r[0]] for r in _tensor_refs(cfg.get("input_layers", []), where)]
    outputs = [tensors[r[0]] for r in _tensor_refs(cfg.get("output_layers", []), where)]
    if not inputs or not outputs:
        raise UnetslError(f"{where}: the model has no inputs or no outputs")
    model_name = str(cfg.get("name", "model"))
    model = keras.Model(inputs[0] if len(inputs) == 1 else inputs,
                        outputs[0] if len(outputs) == 1 else outputs, name=model_name)
    frozen = {e.get("config", {}).get("name") for e in legacy.layers
              if e.get("config", {}).get("trainable") is False}
    for layer in model.layers:
        if layer.name in frozen:
            layer.trainable = False
    return model


def _weight_values(group: h5py.Group, layer_name: str) -> list[np.ndarray]:
    """The weight arrays of one layer in the order Keras 2 saved them."""
    if layer_name not in group:
        return []
    layer_group = group[layer_name]
    names = [_attr_text(n) for n in layer_group.attrs.get("weight_names", [])]
    return [np.asarray(layer_group[n]) for n in names]


def copy_legacy_weights(model: keras.Model, path: str | os.PathLike) -> int:
    """Copy the weights of a Keras-2 file into ``model`` by layer name; returns the count.

    Every layer of ``model`` with weights must find arrays of the same shapes.
    """
    where = f"model file {str(path)!r}"
    copied = 0
    with h5py.File(path, "r") as f:
        group = f["model_weights"]
        for layer in model.layers:
            current = layer.get_weights()
            if not current:
                continue
            values = _weight_values(group, layer.name)
            shapes = [tuple(v.shape) for v in values]
            expected = [tuple(w.shape) for w in current]
            if shapes != expected:
                raise UnetslError(f"{where}: layer {layer.name!r} weights {shapes} do not fit "
                                  f"the rebuilt layer {expected}")
            layer.set_weights(values)
            copied += 1
    return copied


def legacy_loss(name: Any, where: str = "model file") -> keras.losses.Loss:
    """The unetsl loss for a loss as the original's ``training_config`` records it."""

    if isinstance(name, dict):  # a serialised Keras loss object
        name = name.get("config", {}).get("name") or name.get("class_name")
    if not isinstance(name, str):
        raise UnetslError(f"{where}: cannot read the loss {name!r}")
    key = name.rsplit(".", 1)[-1]
    return get_loss(LEGACY_LOSS_NAMES.get(key, name))


def _compile(model: keras.Model, legacy: LegacyFile) -> None:
    """Compile with the file's loss(es) and optimiser; restore the Adam/SGD state if it fits."""

    where = f"model file {str(legacy.path)!r}"
    training = legacy.training_config or {}
    loss_cfg = training.get("loss", "unetsl.model.sorensenDiceCoefLoss")
    if isinstance(loss_cfg, dict) and "class_name" not in loss_cfg:
        loss = {k: legacy_loss(v, where) for k, v in loss_cfg.items()}
    elif isinstance(loss_cfg, list):
        loss = [legacy_loss(v, where) for v in loss_cfg]
    else:
        loss = legacy_loss(loss_cfg, where)
    opt_cfg = training.get("optimizer_config", {}) or {}
    opt_name = str(opt_cfg.get("class_name", "Adam")).split(">")[-1]
    rate = float(opt_cfg.get("config", {}).get("learning_rate", 1e-3))
    if opt_name not in ("Adam", "SGD"):
        log.warning(f"{where}: optimiser {opt_name} replaced by Adam")
        opt_name = "Adam"
    optimizer = get_optimizer(f"keras.optimizers.{opt_name}", rate)
    loss_weights = training.get("loss_weights")
    model.compile(optimizer=optimizer, loss=loss, loss_weights=loss_weights)
    _restore_optimizer_state(model, legacy)


def _restore_optimizer_state(model: keras.Model, legacy: LegacyFile) -> None:
    """Copy Adam's moments and the iteration count saved by tf_keras, when all of them fit."""
    optimizer = model.optimizer
    try:
        with h5py.File(legacy.path, "r") as f:
            if "optimizer_weights" not in f:
                return
            group = f["optimizer_weights"]
            variables = model.trainable_variables
            optimizer.build(variables)
            slots = {"m": getattr(optimizer, "_momentums", None),
                     "v": getattr(optimizer, "_velocities", None)}
            if any(s is None or len(s) != len(variables) for s in slots.values()):
                return
            prefix = [k for k in group.keys() if k != "iteration:0"]
            if len(prefix) != 1:
                return
            base = group[prefix[0]]
            values = []
            for slot, targets in slots.items():
                for var, target in zip(variables, targets):
                    key = f"{slot}/{var.path}:0"
                    if key not in base or tuple(base[key].shape) != tuple(target.shape):
                        return
                    values.append((target, np.asarray(base[key])))
            for target, value in values:
                target.assign(value)
            if "iteration:0" in group:
                optimizer.iterations.assign(int(np.asarray(group["iteration:0"])))
    except (OSError, KeyError, AttributeError, ValueError) as exc:
        log.warning(f"model file {str(legacy.path)!r}: optimiser state not restored ({exc})")


def load_legacy_model(path: str | os.PathLike, compile: bool = False) -> keras.Model:
    """Load a model file of the original as a channels-last Keras 3 model.

    The layers keep their names (``contraction-a-0`` ..., ``conv3d``, ``activation``, and
    the head names of a cerberus model), so outputs are named as in the original. With
    ``compile`` the model is compiled with the file's loss (the original's custom losses
    mapped to unetsl's) and optimiser, and the optimiser state is restored where it fits.
    """
    legacy = read_legacy_file(path)
    model = build_legacy_architecture(legacy)
    copy_legacy_weights(model, path)
    if compile and legacy.training_config is not None:
        _compile(model, legacy)
    return model


def describe_legacy(legacy: LegacyFile) -> str:
    """One line for messages: 'Keras 2.21.0, channels-first, loss sorensenDiceCoefLoss'."""
    layout = "channels-first" if legacy.channels_first else "channels-last"
    loss = (legacy.training_config or {}).get("loss")
    return f"Keras {legacy.keras_version}, {layout}" + (f", loss {loss}" if loss else "")


def legacy_output_names(path: str | os.PathLike) -> Sequence[str]:
    """The output layer names of a legacy file, without building the model."""
    legacy = read_legacy_file(path)
    refs = legacy.model_config["config"].get("output_layers", [])
    return [r[0] for r in _tensor_refs(refs, str(path))]
