"""The two label images an evaluation compares, read and checked alike for every score."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from unetsl.errors import UnetslError
from unetsl.io.tiff import read_image


def read_label_pair(prediction_path: str | os.PathLike, truth_path: str | os.PathLike,
                    what: str = "prediction") -> tuple[np.ndarray, np.ndarray]:
    """Both images as (t, c, z, y, x): the same shape and one channel, or a one-line error
    naming both files (``what`` names the first, e.g. "prediction" or "cells")."""

    prediction = read_image(prediction_path).data
    truth = read_image(truth_path).data
    _refuse_probabilities(prediction, prediction_path, what)
    if prediction.shape != truth.shape:
        raise UnetslError(
            f"{prediction_path} has shape (t, c, z, y, x) = {prediction.shape} but {truth_path} "
            f"has {truth.shape}; the {what} and the truth must be the same size")
    for name, data in ((prediction_path, prediction), (truth_path, truth)):
        if data.shape[1] != 1:
            raise UnetslError(f"{name} has {data.shape[1]} channels; expected a one-channel "
                              "label image (not a probability map)")
    return prediction, truth


def _refuse_probabilities(data: np.ndarray, path: str | os.PathLike, what: str) -> None:
    """A float map with fractional values (predict_image --probabilities' -prob file) is not a
    label image: say which file to give instead, before any shape or channel complaint."""
    if data.dtype.kind != "f" or data.size == 0:
        return
    sample = data.reshape(-1)[:: max(1, data.size // 1_000_000)]
    if not np.any(sample != np.round(sample)):
        return
    wanted = (f"the cells segment_cells {Path(path).name} writes" if what == "cells"
              else "predict_image's label image (the file without -prob)")
    raise UnetslError(f"{path} holds probabilities ({data.shape[1]} channel(s) of fractional "
                      f"values), not labels; give {wanted}")
