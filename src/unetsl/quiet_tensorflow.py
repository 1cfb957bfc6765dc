"""TensorFlow imported without its C++ start-up banner, in any process that loads it: the
console scripts and the Dask workers of ``predict_image --dask`` alike."""

from __future__ import annotations

import os
import sys

__all__ = ["import_tensorflow_quietly"]


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with its C++ start-up banner (oneDNN, CUDA probing) silenced.

    Those lines are written by native code before any Python setting applies, so
    stderr is pointed at /dev/null at the file-descriptor level while TensorFlow
    loads and looks for devices. Python exceptions still propagate normally.
    """
    if "tensorflow" in sys.modules or os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        return
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import keras  # noqa: F401
        import tensorflow as tf

        tf.config.list_physical_devices()
        tf.constant(0)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
