"""What each Dask worker keeps: the model and the opened image, loaded once per process."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unetsl.errors import UnetslError
from unetsl.io.lazy import open_image
from unetsl.predict.adapter import KerasTiles

THREADS_ENV = "UNETSL_TF_THREADS"  # TensorFlow threads per worker process

log = logging.getLogger("unetsl")


_CACHE_LOCK = threading.Lock()
_MODELS: dict[tuple, Any] = {}
_SOURCES: dict[tuple, Any] = {}
_LOADS = {"models": 0}


def _file_key(path: str) -> tuple:
    p = Path(path)
    if p.is_dir():  # a SavedModel / .keras folder
        stat = p.stat()
        return (str(p.resolve()), stat.st_mtime_ns, 0)
    stat = p.stat()
    return (str(p.resolve()), stat.st_mtime_ns, stat.st_size)


def _set_threads() -> None:
    threads = os.environ.get(THREADS_ENV)
    if not threads:
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(int(threads))
        tf.config.threading.set_inter_op_parallelism_threads(int(threads))
    except RuntimeError:  # TensorFlow already started in this process
        pass


def worker_model(model: Any, output_indices: Sequence[int], tile: Sequence[int] | None = None,
                 precision: str = "float32"):
    """The ``KerasTiles`` of a model file, loaded once per process (per file version).

    model : a model file path, or a ``TileModel`` (used as is; tests, in-process clusters).
    tile : the (z, y, x) tile the client planned; the model is rebuilt for it
        (``unetsl.nets.model_files.with_input_patch``) when it differs from the training patch.
    precision : the dtype policy it computes in (``unetsl.nets.precision.with_precision``).
    """

    if not isinstance(model, (str, os.PathLike)):
        return model
    if not os.path.exists(model):

        raise UnetslError(f"{os.fspath(model)}: no such model file on worker host "
                          f"{socket.gethostname()} (the model must be on a shared file system)")
    key = (*_file_key(os.fspath(model)), tuple(output_indices),
           tuple(tile) if tile is not None else None, precision)
    with _CACHE_LOCK:
        tiles = _MODELS.get(key)
        if tiles is None:
            from unetsl.nets.model_files import load_model, with_input_patch
            from unetsl.nets.precision import with_precision

            _set_threads()
            keras_model = with_precision(load_model(os.fspath(model)), precision)
            if tile is not None:
                keras_model = with_input_patch(keras_model, tile)
            tiles = KerasTiles(keras_model, list(output_indices))
            tiles(np.zeros((1, *tiles.patch), dtype=np.float32))  # build the predict function
            _MODELS[key] = tiles
            _LOADS["models"] += 1
    return tiles


def models_loaded() -> int:
    """How many models this process has loaded (tests check: once per worker)."""
    return _LOADS["models"]


def worker_source(source: Any, depth_wanted: int):
    if not isinstance(source, (str, os.PathLike)):
        return source
    key = (os.fspath(source), depth_wanted)
    with _CACHE_LOCK:
        opened = _SOURCES.get(key)
        if opened is None:

            opened = open_image(os.fspath(source), depth_wanted=depth_wanted).data
            _SOURCES[key] = opened
    return opened


