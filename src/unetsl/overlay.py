"""An overlay PNG of a prediction on its image, so a person can see what was found."""

from __future__ import annotations

import os

import numpy as np

from unetsl.atomic import atomic_path
from unetsl.errors import UnetslError


def _plane(data: np.ndarray, index: int | None) -> np.ndarray:
    """The middle (or ``index``-th) plane of a (t, c, z, y, x) array, channel 0."""
    planes = data[:, 0].reshape(-1, *data.shape[-2:])
    i = len(planes) // 2 if index is None else index
    if not 0 <= i < len(planes):
        raise UnetslError(f"plane {i} does not exist: the image has {len(planes)} planes")
    return planes[i]


def overlay_png(path: str | os.PathLike, image: np.ndarray, prediction: np.ndarray,
                truth: np.ndarray | None = None, *, plane: int | None = None) -> None:
    """Write image | image + prediction | truth-vs-prediction for one plane as a PNG.

    image, prediction, truth : (t, c, z, y, x) arrays of the same (y, x) size; label
    values are bit masks (bit 0 membrane in red, bit 1 vertex in yellow). In the last
    panel green = found and true, magenta = found only, blue = missed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    raw = _plane(image, plane).astype(np.float32)
    low, high = np.percentile(raw, [1, 99.8])
    gray = np.clip((raw - low) / max(high - low, 1e-6), 0, 1)
    pred = _plane(prediction, plane).astype(np.int64)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    found = rgb.copy()
    found[(pred & 1) > 0] = (1.0, 0.1, 0.1)
    found[(pred & 2) > 0] = (1.0, 0.9, 0.0)
    panels = [("image", rgb), ("prediction (red membrane, yellow vertex)", found)]
    if truth is not None:
        true = _plane(truth, plane).astype(np.int64) & 1
        got = pred & 1
        compare = 0.4 * rgb
        compare[(got > 0) & (true > 0)] = (0.1, 0.9, 0.1)
        compare[(got > 0) & (true == 0)] = (0.9, 0.1, 0.9)
        compare[(got == 0) & (true > 0)] = (0.2, 0.4, 1.0)
        panels.append(("membrane: green hit, magenta extra, blue missed", compare))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5.4))
    for ax, (title, picture) in zip(np.atleast_1d(axes), panels):
        ax.imshow(picture, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
