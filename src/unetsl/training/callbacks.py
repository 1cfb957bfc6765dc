"""Callbacks of a training run: the samples predicted every epoch and the one-line epoch report."""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import keras
import numpy as np

from unetsl.io.tiff import match_channels, read_image, write_like
from unetsl.nets.shapes import model_patch_shape, output_activations
from unetsl.predict.engine import predict
from unetsl.predict.reduce import reduce, reduction_for_activation
from unetsl.training.checkpoints import (
    TrainingState,
)
from unetsl.training.logs import is_channel_score

SAMPLE_BATCH_SIZE = 2  # the original predicted "samples to predict" with batch size 2

log = logging.getLogger("unetsl")


# ---------------------------------------------------------------------------- callbacks


class SamplePredictor(keras.callbacks.Callback):
    """Predict "samples to predict" before training (e0) and after every epoch (e<N>).

    Files: ``predictions/pred-<name>-e<N>-<sample file name>``, labels reduced as
    predict_image does for the model's last output, with the sample's pixel size.
    """

    def __init__(self, samples: Sequence[Path], folder: Path, name: str, *, initial: bool):
        super().__init__()
        self.samples = list(samples)
        self.folder = Path(folder)
        self.name = name
        self.initial = initial
        self.written: list[Path] = []
        self._images: dict[Path, Any] = {}

    def _load(self, path: Path) -> Any:
        if path not in self._images:

            _, z, _, _ = model_patch_shape(self.model)
            self._images[path] = read_image(path, depth_wanted=z)
        return self._images[path]

    def predict_all(self, number: int) -> None:
        """Predict as predict_image would: the normalisation recorded on the model, the
        original's channel rules, labels of the last output."""

        reduction = reduction_for_activation(output_activations(self.model)[-1])
        c = model_patch_shape(self.model)[0]
        for path in self.samples:
            image = self._load(path)
            data = match_channels(image.data, c, source=str(path))
            probs = predict(self.model, data, batch_size=SAMPLE_BATCH_SIZE, output_index=-1)
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
    """One short line per epoch (for Slurm logs and pipes, where a progress bar is noise).

    It fits one screen width (about 100 characters) for any model: epoch, time, loss,
    val_loss, for one output the per-channel validation F1 (``val_f1_0/1 0.91/0.42``: the
    channels a model never learns show at once), and the best value of "monitor" so far
    with its epoch. Every metric of every output is in the epoch log file.
    """

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
        stream = self.stream or sys.stdout
        stream.write(epoch_line(epoch, self.epochs, time.monotonic() - self._start,
                                logs or {}, self.state) + "\n")
        stream.flush()


def epoch_line(epoch: int, epochs: int, seconds: float, logs: dict, state: TrainingState
               ) -> str:
    """``epoch 12/2000 41.2s  loss 0.4123  val_loss 0.3981  val_f1_0/1 0.91/0.42  best
    0.3981 (epoch 12)``; per-channel F1 only for single-output models (plain ``f1_<k>``
    keys), the validation ones when there are any."""

    def number(key: str) -> float | None:
        value = logs.get(key)
        return float(value) if isinstance(value, (int, float, np.floating)) else None

    parts = [f"epoch {epoch + 1}/{epochs} {seconds:.1f}s"]
    shown = [k for k in ("loss", "val_loss") if number(k) is not None]
    parts += [f"{k} {number(k):.4g}" for k in shown]
    scores = sorted((k for k in logs if re.fullmatch(r"(val_)?f1_\d+", k)
                     and number(k) is not None), key=_channel_order)
    validation = [k for k in scores if k.startswith("val_")]
    scores = validation or scores
    if scores:
        prefix = scores[0].rsplit("_", 1)[0]
        channels = "/".join(k.rsplit("_", 1)[1] for k in scores)
        values = "/".join(f"{number(k):.2f}" for k in scores)
        parts.append(f"{prefix}_{channels} {values}")
    if state.best is not None and state.best_epoch is not None:
        name = "" if state.monitor in shown else f"{state.monitor} "
        if state.smoothing:
            name += "avg "  # "best" is of the moving average ("monitor smoothing")
        parts.append(f"best {name}{state.best:.4g} (epoch {state.best_epoch + 1})")
    return "  ".join(parts)


def _channel_order(key: str) -> tuple[str, int]:
    head, _, k = key.rpartition("_")
    return head, int(k)


def _head_of(score: str) -> str | None:
    """The output a per-channel score belongs to ("membrane-scale_f1_1" -> "membrane-scale"),
    None for a one-output model's "f1_1"."""
    head, _, _ = score.rpartition("_f1_")
    return head or None


#: the Dice + BCE losses: a config with either already learns sparse channels
DICE_BCE = ("unetsl.batchDiceBceLoss", "unetsl.channelDiceBceLoss")


class LearningWatch(keras.callbacks.Callback):
    """Say in one line when training has gone wrong, instead of letting it run on silently.

    After every epoch: the model's outputs on one fixed batch of patches are checked for a
    collapse to one value everywhere (a too-high learning rate, unnormalised input); after
    ``patience`` epochs, every per-channel F1 (validation when there is validation data) that
    is still 0 is named: that channel never matches its target; and a sigmoid channel that
    is on (>= 0.5) at nearly every voxel of the probe (``ON_EVERYWHERE``) is named: the
    other collapse, which a Dice loss alone falls into on sparse foreground (F1 0.30 on
    DSB2018 in benchmarks/accuracy.py). Each is said once.
    """

    #: fraction of probe voxels at or above 0.5 from which a channel counts as on everywhere
    ON_EVERYWHERE = 0.995

    def __init__(self, probe: np.ndarray, *, validation: bool, patience: int = 3,
                 settings: Any = None):
        super().__init__()
        self.probe = probe
        self.prefix = "val_" if validation else ""
        self.patience = patience
        self.said: set[str] = set()
        self.settings = settings or {}  # the config: advice only for what it does not use

    def _try(self, *advice: tuple[str, Any, str], head: str | None = None) -> str:
        """'try A and B' from (key, value, text) pairs whose key does not already hold value;
        a per-head value (a cerberus config's {head: loss}) is that of ``head``, or of
        every head when the warning names none."""
        def holds(key: str, value: Any) -> bool:
            accepted = value if isinstance(value, tuple) else (value,)  # any of a tuple
            found = self.settings.get(key)
            if isinstance(found, dict):
                chosen = [found[head]] if head in found else list(found.values())
                return bool(chosen) and all(v in accepted for v in chosen)
            return found in accepted

        chosen = [text for key, value, text in advice if not holds(key, value)]
        return "; try " + " and ".join(chosen) if chosen else ""

    def _warn(self, key: str, message: str) -> None:
        if key not in self.said:
            self.said.add(key)
            log.warning(message)

    def _check_on_everywhere(self, name: str, out: np.ndarray, epoch: int) -> None:
        """Warn about channels that are >= 0.5 almost everywhere (sigmoid outputs only: in a
        softmax output one channel, the background, may rightly win almost everywhere)."""
        values = out.reshape(-1, out.shape[-1])
        if values.size == 0 or values.min() < 0 or values.max() > 1:
            return  # not probabilities (linear or relu outputs)
        if values.shape[1] > 1 and np.allclose(values.sum(axis=1), 1.0, atol=1e-3):
            return  # softmax
        on = (values >= 0.5).mean(axis=0)
        for channel in np.flatnonzero(on >= self.ON_EVERYWHERE):
            self._warn(f"on everywhere {name} {channel}", (
                f"output {name} channel {channel} is on (>= 0.5) at {100 * on[channel]:.1f}% "
                f"of the probe patches after epoch {epoch + 1}: it marks everything as "
                "foreground" + self._try(
                    ("loss function", DICE_BCE, '"loss function": "unetsl.batchDiceBceLoss"'),
                    ("normalization percentiles", [1, 99.8],
                     '"normalization percentiles": [1, 99.8]'), head=name)))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:

        outputs = self.model.predict_on_batch(self.probe)
        if not isinstance(outputs, (list, tuple)):
            outputs = [outputs]
        for name, out in zip(self.model.output_names, outputs):
            values = np.asarray(out, dtype=np.float32)
            values = values.reshape(-1, values.shape[-1])  # (voxels, channels)
            spread = values.max(axis=0) - values.min(axis=0) if values.size else [1.0]
            if float(np.max(spread)) < 1e-6:
                level = ", ".join(f"{v:.3g}" for v in values[0])
                self._warn(f"constant {name}", (
                    f"output {name} is the same everywhere ({level}) after epoch {epoch + 1}: "
                    "the model has collapsed" + self._try(
                        ("", 0, 'a lower "initial learning rate"'),
                        ("normalization percentiles", [1, 99.8],
                         '"normalization percentiles": [1, 99.8]'),
                        # sparse objects: a Dice per patch drives the output to 0 on patches
                        # without any (a real phase-contrast movie collapsed in 5 of 6 runs
                        # of nuclei.py; the batch Dice or foreground sampling learned)
                        ("loss function", "unetsl.batchDiceBceLoss",
                         '"loss function": "unetsl.batchDiceBceLoss"'),
                        ("sampling", "foreground", '"sampling": "foreground"'))))
        if epoch + 1 < self.patience:
            return
        for name, out in zip(self.model.output_names, outputs):
            self._check_on_everywhere(name, np.asarray(out, dtype=np.float32), epoch)
        for key, value in (logs or {}).items():
            if (is_channel_score(key) and key.startswith(self.prefix)
                    and not key[len(self.prefix):].startswith("val_")
                    and float(value) <= 1e-3):
                self._warn(key, (
                    f"{key} is {float(value):.3f} after {epoch + 1} epochs: that channel never "
                    "matches its target" + self._try(
                        ("sampling", "foreground", '"sampling": "foreground"'),
                        ("loss function", DICE_BCE, '"loss function": "unetsl.batchDiceBceLoss"'),
                        ("", 0, "more epochs"), head=_head_of(key[len(self.prefix):]))))
