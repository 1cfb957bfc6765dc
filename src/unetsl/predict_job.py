"""One predict_image run: its settings (the original's keys), loading, predicting, writing."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unetsl.config import parse_overrides
from unetsl.errors import UnetslError

log = logging.getLogger("unetsl")

SETTING_CHECKS = {
    "batch size": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                   "an integer >= 1"),
    "output index": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "reduction type": (lambda v: v is None or v in (0, 1, 2), "0, 1, 2 or null (from activation)"),
    "normalize samples": (lambda v: isinstance(v, bool), "true or false"),
    "overlap": (lambda v: v is None or (isinstance(v, list) and len(v) == 3
                                        and all(isinstance(i, int) and i >= 0 for i in v)),
                "null (automatic) or 3 integers (z, y, x)"),
    "model file": (lambda v: isinstance(v, str) and v != "", "a file name"),
    "image to predict": (lambda v: isinstance(v, str) and v != "", "a file name"),
    "output image": (lambda v: isinstance(v, str) and v != "", "a file name"),
}


def default_output_path(model_path: Path, image_path: Path) -> Path:
    """pred-<model name without suffix>-<image file name> in the working directory."""
    base = model_path.name[: -len(model_path.suffix)] if model_path.suffix else model_path.name
    return Path(f"pred-{base}-{image_path.name}")


@dataclass
class PredictionJob:
    """Settings of one prediction, editable as the original's key/value table."""

    values: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, model: Path, image: Path, output: Path | None = None) -> PredictionJob:
        return cls({
            "model file": str(model),
            "image to predict": str(image),
            "output image": str(output or default_output_path(model, image)),
            "reduction type": None,
            "output index": -1,
            "normalize samples": False,
            "batch size": 16,
            "overlap": None,
        })

    def settings(self) -> dict[str, Any]:
        return dict(self.values)

    def check_settings(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            if key not in SETTING_CHECKS:
                raise UnetslError(f'unknown prediction setting "{key}"; known: '
                                  + ", ".join(f'"{k}"' for k in SETTING_CHECKS))
            check, kind = SETTING_CHECKS[key]
            if not check(value):
                raise UnetslError(f'prediction setting "{key}" must be {kind}, got {value!r}')

    def update(self, values: dict[str, Any]) -> None:
        self.check_settings(values)
        self.values.update(values)

    def apply_overrides(self, overrides: tuple[str, ...] | list[str]) -> None:
        self.update(parse_overrides(overrides))

    def run(self, *, probabilities: bool = False, gpus: int = 1, progress=None) -> list[Path]:
        """Load, predict every time point, reduce and write; returns the files written."""
        from unetsl.io import match_channels, read_image, write_like
        from unetsl.model import load_model, model_patch_shape, output_activations
        from unetsl.predict import predict, reduce, reduction_for_activation, reduction_name

        model = load_model(self.values["model file"])
        c, z, _, _ = model_patch_shape(model)
        image = read_image(self.values["image to predict"], depth_wanted=z)
        data = match_channels(image.data, c, source=self.values["image to predict"])
        index = self.values["output index"]
        activations = output_activations(model)
        if not -len(activations) <= index < len(activations):
            raise UnetslError(f'"output index" {index} is out of range: the model has '
                              f"{len(activations)} output(s)")
        if self.values["reduction type"] is None:
            reduction = reduction_for_activation(activations[index])
        else:
            reduction = reduction_name(self.values["reduction type"])
        overlap = self.values["overlap"]
        probs = predict(model, data.astype(np.float32), batch_size=self.values["batch size"],
                        overlap=tuple(overlap) if overlap else None,
                        normalize=self.values["normalize samples"], output_index=index,
                        progress=progress)
        labels = reduce(probs, reduction)[:, None]
        out = Path(self.values["output image"])
        write_like(out, labels, image)
        written = [out]
        if probabilities:
            prob_path = out.with_name(out.stem + "-prob" + (out.suffix or ".tif"))
            write_like(prob_path, probs.astype(np.float32), image)
            written.append(prob_path)
        return written
