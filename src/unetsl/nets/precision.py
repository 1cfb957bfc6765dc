"""Reduced precision where the hardware is faster with it: the "precision" setting.

Measured (issue 14): the same U-Net forward pass under Keras' ``mixed_bfloat16`` ran 3.5x
faster on an Intel Xeon with AMX and predicted the demo with 99.99% of its labels equal,
while an AMD EPYC with AVX-512 BF16 but no AMX gained only 1.26x (and CPUs without bf16
instructions emulate it, slower than float32). GPUs of compute capability >= 8.0 (Ampere,
Hopper) have bfloat16 tensor cores; 7.x (Volta, Turing) have float16 ones, which need loss
scaling in training (Keras adds it when it compiles a ``mixed_float16`` model).

"auto" therefore proposes bfloat16 on AMX CPUs and Ampere-or-newer GPUs, float16 on older
tensor-core GPUs, and float32 elsewhere; ``UNETSL_PRECISION`` replaces "auto" for every
command. A proposal is only used after :mod:`unetsl.nets.precision_check` has shown on this
machine's kernels that it trains (or predicts) like float32: AMX's bfloat16 kernels train
3D convolutions wrongly (issue 24), so there training falls back to float32.

The outputs (the last activation of every output and anything after it) always stay
float32, as Keras recommends, so probabilities, losses and reductions are computed in
float32. A model is switched by cloning its layers with the new
dtype policy and copying the weights, so it works for models loaded from files (a global
policy set before loading changes nothing there), the original's included; models saved
from a mixed run load back as float32 models (:func:`as_float32`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import keras

from unetsl.config.fields import PRECISIONS
from unetsl.data.normalize import attach_normalization, model_normalization
from unetsl.errors import UnetslError

log = logging.getLogger("unetsl")

__all__ = ["PRECISIONS", "PRECISION_ENV", "PrecisionChoice", "as_float32", "choose_precision",
           "cpu_flags", "with_precision"]

#: Replaces "auto" for every command (a cluster's admin, CI, a paper's methods section).
PRECISION_ENV = "UNETSL_PRECISION"

@dataclass(frozen=True)
class PrecisionChoice:
    """The dtype policy a run uses and why (said in one info line)."""

    policy: str
    reason: str
    #: True when "auto" chose it from the hardware (then a failed check falls back to float32)
    automatic: bool = False
    #: True when it is bfloat16 proposed for a CPU's AMX units (see ``precision_check``)
    amx: bool = False


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, set[str]]:
    """(CPU model name, its instruction-set flags) from /proc/cpuinfo (empty elsewhere)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "unknown CPU", set()
    model, flags = "unknown CPU", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == "unknown CPU":
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return model, flags


def _gpu_capabilities() -> list[tuple[str, float]]:
    """(name, compute capability) of every visible GPU (TensorFlow and JAX backends)."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return [(d.device_kind, float(getattr(d, "compute_capability", 0) or 0))
                for d in jax.devices() if d.platform == "gpu"]
    if backend != "tensorflow":
        return []
    import tensorflow as tf

    found = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        major, minor = details.get("compute_capability", (0, 0))
        found.append((details.get("device_name", device.name), major + minor / 10))
    return found


def choose_precision(setting: str, *, gpus: list[tuple[str, float]] | None = None,
                     cpu: tuple[str, set[str]] | None = None,
                     environ: Mapping[str, str] | None = None) -> PrecisionChoice:
    """The policy for the "precision" setting before any check; "auto" takes
    ``UNETSL_PRECISION`` when it is set, else looks at the hardware (``gpus``, ``cpu`` and
    ``environ`` replace this machine's, for tests and reports)."""
    if setting not in PRECISIONS:
        raise UnetslError(f'"precision" must be one of {", ".join(PRECISIONS)}, got {setting!r}')
    if setting != "auto":
        return PrecisionChoice(setting, "as set")
    override = (os.environ if environ is None else environ).get(PRECISION_ENV, "").strip()
    if override and override != "auto":
        if override not in PRECISIONS:
            raise UnetslError(f"{PRECISION_ENV} must be one of {', '.join(PRECISIONS)}, "
                              f"got {override!r}")
        return PrecisionChoice(override, f"{PRECISION_ENV}={override}")
    return _hardware_choice(_gpu_capabilities() if gpus is None else gpus,
                            cpu_flags() if cpu is None else cpu)


def _hardware_choice(gpus: list[tuple[str, float]], cpu: tuple[str, set[str]]) -> PrecisionChoice:
    if gpus:
        name, capability = min(gpus, key=lambda g: g[1])
        if capability >= 8.0:
            return PrecisionChoice("mixed_bfloat16", f"{name} (compute capability "
                                   f"{capability:.1f}) has bfloat16 tensor cores", True)
        if capability >= 7.0:
            return PrecisionChoice("mixed_float16", f"{name} (compute capability "
                                   f"{capability:.1f}) has float16 tensor cores", True)
        return PrecisionChoice("float32", f"{name} has no tensor cores", True)
    model, flags = cpu
    if "amx_bf16" in flags:
        return PrecisionChoice("mixed_bfloat16", f"{model} has AMX (bfloat16 measured 3.5x "
                               "faster for prediction)", True, amx=True)
    return PrecisionChoice("float32", f"{model} has no AMX (bfloat16 would not be faster)", True)


def _output_chain(model: keras.Model) -> set[str]:
    """Names of the layers that make each output: the output layer and, through Reshape
    layers, the activation before them. They stay float32."""
    names: set[str] = set()
    for tensor in model.outputs:
        layer = tensor._keras_history.operation
        while True:
            names.add(layer.name)
            if not isinstance(layer, keras.layers.Reshape):
                break
            layer = layer._inbound_nodes[0].input_tensors[0]._keras_history.operation
    return names


def _policies(model: keras.Model) -> set[str]:
    return {layer.dtype_policy.name for layer in model.layers
            if not isinstance(layer, keras.layers.InputLayer)}


def with_precision(model: keras.Model, policy: str) -> keras.Model:
    """The same network computing in ``policy`` (a Keras dtype policy name), outputs float32.

    Returns ``model`` itself when nothing changes; otherwise a clone with the same weights
    (and the same recorded input normalisation).
    """
    keep = _output_chain(model)
    wanted = {layer.name: "float32" if layer.name in keep else policy for layer in model.layers}
    if all(layer.dtype_policy.name == wanted[layer.name] for layer in model.layers
           if not isinstance(layer, keras.layers.InputLayer)):
        return model

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        config["dtype"] = wanted[layer.name]
        return layer.__class__.from_config(config)

    try:
        copy = keras.models.clone_model(model, clone_function=clone)
    except Exception as exc:  # a layer Keras cannot rebuild from its config
        raise UnetslError(f"model {model.name!r} cannot run in {policy}: "
                          f"{' '.join(str(exc).split())[:200]}") from exc
    copy.set_weights(model.get_weights())
    return attach_normalization(copy, model_normalization(model))


def as_float32(model: keras.Model) -> keras.Model:
    """A model saved during a mixed-precision training, as the float32 model it stands for."""
    if _policies(model) <= {"float32"}:
        return model
    return with_precision(model, "float32")
