"""Callbacks of a training run: the samples predicted every epoch and the one-line epoch report."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import keras
import numpy as np

from unetsl.training.checkpoints import (
    TrainingState,
)

SAMPLE_BATCH_SIZE = 2  # the original predicted "samples to predict" with batch size 2

log = logging.getLogger("unetsl")


# ---------------------------------------------------------------------------- callbacks


class SamplePredictor(keras.callbacks.Callback):
    """Predict "samples to predict" before training (e0) and after every epoch (e<N>).

    Files: ``predictions/pred-<name>-e<N>-<sample file name>``, labels reduced as
    predict_image does for the model's last output, with the sample's pixel size.
    """

    def __init__(self, samples: Sequence[Path], folder: Path, name: str, *,
                 normalize: bool, percentiles: Sequence[float] | None, initial: bool):
        super().__init__()
        self.samples = list(samples)
        self.folder = Path(folder)
        self.name = name
        self.normalize = normalize
        self.percentiles = percentiles
        self.initial = initial
        self.written: list[Path] = []
        self._images: dict[Path, tuple[Any, np.ndarray]] = {}

    def _load(self, path: Path) -> tuple[Any, np.ndarray]:
        if path not in self._images:
            from unetsl.data.normalize import percentile_normalize
            from unetsl.io.tiff import match_channels, read_image
            from unetsl.nets.shapes import model_patch_shape

            c, z, _, _ = model_patch_shape(self.model)
            image = read_image(path, depth_wanted=z)
            data = match_channels(image.data, c, source=str(path)).astype(np.float32)
            if self.percentiles is not None:
                data = percentile_normalize(data, self.percentiles, channel_axis=1)
            self._images[path] = (image, data)
        return self._images[path]

    def predict_all(self, number: int) -> None:
        from unetsl.io.tiff import write_like
        from unetsl.nets.shapes import output_activations
        from unetsl.predict.engine import predict
        from unetsl.predict.reduce import reduce, reduction_for_activation

        reduction = reduction_for_activation(output_activations(self.model)[-1])
        for path in self.samples:
            image, data = self._load(path)
            probs = predict(self.model, data, batch_size=SAMPLE_BATCH_SIZE,
                            normalize=self.normalize, output_index=-1)
            labels = reduce(probs, reduction)
            if labels.ndim == probs.ndim - 1:
                labels = labels[:, None]
            out = self.folder / f"pred-{self.name}-e{number}-{path.name}"
            self.folder.mkdir(parents=True, exist_ok=True)
            write_like(out, labels, image)
            self.written.append(out)

    def on_train_begin(self, logs: dict | None = None) -> None:
        if self.initial:
            self.predict_all(0)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.predict_all(epoch + 1)


class EpochLine(keras.callbacks.Callback):
    """One line per epoch (for Slurm logs and pipes, where a progress bar is noise)."""

    def __init__(self, epochs: int, steps: int, state: TrainingState, stream: TextIO | None = None):
        super().__init__()
        self.epochs = epochs
        self.steps = steps
        self.state = state
        self.stream = stream
        self._start = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        parts = [f"epoch {epoch + 1}/{self.epochs}", f"{self.steps} steps",
                 f"{time.monotonic() - self._start:.1f}s"]
        parts += [f"{k}: {float(v):.4g}" for k, v in sorted(logs.items())
                  if isinstance(v, (int, float, np.floating))]
        if self.state.best_epoch == epoch:
            parts.append(f"best {self.state.monitor}")
        stream = self.stream or sys.stdout
        stream.write(" - ".join(parts) + "\n")
        stream.flush()


