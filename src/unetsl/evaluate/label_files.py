"""The two label images an evaluation compares, read and checked alike for every score."""

from __future__ import annotations

import os

import numpy as np

from unetsl.errors import UnetslError
from unetsl.io.tiff import read_image


def read_label_pair(prediction_path: str | os.PathLike, truth_path: str | os.PathLike,
                    what: str = "prediction") -> tuple[np.ndarray, np.ndarray]:
    """Both images as (t, c, z, y, x): the same shape and one channel, or a one-line error
    naming both files (``what`` names the first, e.g. "prediction" or "cells")."""

    prediction = read_image(prediction_path).data
    truth = read_image(truth_path).data
    if prediction.shape != truth.shape:
        raise UnetslError(
            f"{prediction_path} has shape (t, c, z, y, x) = {prediction.shape} but {truth_path} "
            f"has {truth.shape}; the {what} and the truth must be the same size")
    for name, data in ((prediction_path, prediction), (truth_path, truth)):
        if data.shape[1] != 1:
            raise UnetslError(f"{name} has {data.shape[1]} channels; expected a one-channel "
                              "label image (not a probability map)")
    return prediction, truth
