"""One predict_image run on an image held in memory (a napari layer, a notebook array).

``PredictionJob.run`` streams a file to files; :func:`predict_array` takes the same job
settings ("output index", "reduction type", the input normalisation, "batch size",
"overlap", "tile shape") and the same steps (channel rules, finite pixels, 2D time series
as depth, normalisation, tiles, reductions) on a (t, c, z, y, x) array and returns
arrays, so both give the same labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from unetsl.data.normalize import InputNormalization
from unetsl.errors import UnetslError
from unetsl.io.arrays import ArraySource, check_finite
from unetsl.io.tiff import frames_as_depth, match_channels
from unetsl.predict.engine import Progress, predict_outputs
from unetsl.predict.job import PredictionJob
from unetsl.predict.model_info import ModelInfo
from unetsl.predict.reduce import reduce

__all__ = ["ArrayPrediction", "predict_array"]


@dataclass
class ArrayPrediction:
    """What :func:`predict_array` made, one entry per predicted output of the model.

    probabilities : float32 (t, n, z, y, x), in the input's layout (frames stay frames).
    labels : (t, 1, z, y, x) bit masks (linear: (t, n, z, y, x) values), as predict_image
        writes them.
    """

    names: list[str]
    reductions: list[str]
    probabilities: list[np.ndarray]
    labels: list[np.ndarray]


def predict_array(job: PredictionJob, image: np.ndarray, *, model: Any = None,
                  progress: Progress | None = None) -> ArrayPrediction:
    """Predict a (t, c, z, y, x) array with the job's model and settings.

    model : an already loaded Keras model instead of the job's "model file".
    progress : ``progress(tiles done, tiles total, time points done, total)``; raising in it
        stops the prediction (a cancel button).
    """
    from unetsl.nets.model_files import load_model
    from unetsl.nets.precision import with_precision

    job.check_settings(job.values)
    array = np.asarray(image)
    if array.ndim != 5:
        raise UnetslError(f"image of shape {array.shape} is not (t, c, z, y, x)")
    if model is None:
        model = load_model(job.values["model file"])
    model = with_precision(model, job.decide_precision().policy)  # as predict_image does
    info = ModelInfo.of(model)  # read once: patch, outputs, activations, reach
    c, z, _, _ = info.patch
    name = str(job.values["image to predict"])
    array = match_channels(array, c, source=name)
    check_finite(ArraySource(array), name)  # NaN/Inf pixels are refused, as from files
    array, swapped = frames_as_depth(array, z)
    indices = job._indices(info)
    reductions = job._reductions(info, indices)
    overlap = job.values["overlap"]
    tile = job.values.get("tile shape")
    outputs = predict_outputs(
        model, array, output_indices=indices, batch_size=job.values["batch size"],
        overlap=tuple(overlap) if overlap is not None else None,
        tile=tuple(tile) if tile is not None else None,
        normalization=InputNormalization.from_settings(job.values), progress=progress,
        info=info, augment=job.augmented)
    if swapped:
        outputs = [np.swapaxes(p, 0, 2) for p in outputs]
    labels = [reduce(p, r, channel_axis=1) for p, r in zip(outputs, reductions, strict=True)]
    names = [info.output_names[i] for i in indices]
    return ArrayPrediction(names, reductions, outputs, labels)
