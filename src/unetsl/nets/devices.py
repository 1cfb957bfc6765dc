"""Where training runs: one device, several GPUs (data-parallel), and reproducible runs.

The original replicated the model with ``multi_gpu_model``, which TensorFlow removed in 2.4.
Here ``"multi-gpu": true`` or ``GPUS``/``--gpus N`` above 1 train under
``tf.distribute.MirroredStrategy`` over the first N GPUs: every step splits the global
"batch size" across the GPUs and averages the gradients. A machine without a GPU says so
once and trains on the CPU.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence

from unetsl.errors import UnetslError

log = logging.getLogger("unetsl")

__all__ = ["OneDevice", "distribution_strategy", "gpus_wanted", "keras_backend",
           "set_deterministic", "visible_gpus"]

_said_no_gpu = False


def keras_backend() -> str:
    """The Keras backend in use: "tensorflow" (the supported one), or "jax"/"torch", which
    train and predict on one device (their GPU when they have one) without tf.distribute."""
    import keras

    return keras.backend.backend()


def visible_gpus() -> list:
    """The GPUs the backend can use (empty on a CPU-only machine or a CPU-only build)."""
    backend = keras_backend()
    if backend == "jax":
        import jax

        return [d for d in jax.devices() if d.platform == "gpu"]
    if backend == "torch":
        import torch

        return list(range(torch.cuda.device_count()))
    import tensorflow as tf

    return list(tf.config.list_physical_devices("GPU"))


class OneDevice:
    """What training and prediction use of a strategy, for the jax and torch backends:
    everything runs on the backend's default device (its first GPU, else the CPU)."""

    num_replicas_in_sync = 1
    cluster_resolver = None

    def scope(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()


def gpus_wanted(gpus: int | None, multi_gpu: bool) -> int:
    """How many GPUs to train on.

    gpus : --gpus or the GPUS environment variable when given, else None.
    multi_gpu : the config's "multi-gpu". With it and no explicit count, every visible GPU.
    """
    if gpus is not None:
        if gpus < 0:
            raise UnetslError(f"--gpus/GPUS must be 0 or more, got {gpus}")
        return gpus
    if multi_gpu:
        return max(1, len(visible_gpus()))
    return 1


def distribution_strategy(gpus: int, *, devices: Sequence[str] | None = None):
    """A tf.distribute strategy for ``gpus`` GPUs.

    0 or 1 GPU, or no GPU at all: TensorFlow's default strategy (one device; on a machine
    without GPU one info line says training runs on the CPU). N >= 2: MirroredStrategy over
    /gpu:0 .. /gpu:N-1 (fewer, with a warning, when fewer are visible).
    ``devices`` names the replicas explicitly (tests use logical CPU devices).
    """
    global _said_no_gpu
    if keras_backend() != "tensorflow":
        found = visible_gpus()
        if gpus > 1:
            log.warning(f"{gpus} GPUs need the TensorFlow backend (tf.distribute); training "
                        f"on one device with Keras' {keras_backend()} backend")
        log.info(f"Keras {keras_backend()} backend: running on "
                 + ("the first GPU" if found else "the CPU"))
        return OneDevice()
    import tensorflow as tf

    if devices is not None:
        devices = list(devices)
        if len(devices) < 2:
            return tf.distribute.get_strategy()
        log.info(f"training on {len(devices)} devices (mirrored): {', '.join(devices)}")
        return tf.distribute.MirroredStrategy(devices=devices)
    found = visible_gpus()
    if not found:
        if not _said_no_gpu:
            log.info("no GPU found: training on the CPU" + (f" (asked for {gpus} GPUs)"
                                                             if gpus > 1 else ""))
            _said_no_gpu = True
        return tf.distribute.get_strategy()
    if gpus > len(found):
        log.warning(f"asked for {gpus} GPUs but {len(found)} are visible; using {len(found)}")
        gpus = len(found)
    if gpus <= 1:
        return tf.distribute.get_strategy()
    names = [f"/gpu:{i}" for i in range(gpus)]
    log.info(f"training on {gpus} GPUs (mirrored strategy): {', '.join(names)}")
    return tf.distribute.MirroredStrategy(devices=names)


def set_deterministic(seed: int | None) -> None:
    """With a seed: seed Python, NumPy and Keras, and ask TensorFlow for deterministic ops.

    Two runs with the same seed, data and machine then give the same weights and logs
    (GPU kernels without a deterministic version raise an error instead of varying).
    """
    if seed is None:
        return
    import keras

    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    keras.utils.set_random_seed(int(seed))
    if keras_backend() != "tensorflow":
        return
    import tensorflow as tf

    try:
        tf.config.experimental.enable_op_determinism()
    except (AttributeError, RuntimeError) as exc:  # very old TF, or too late to switch
        log.warning(f"deterministic ops not available: {exc}")
