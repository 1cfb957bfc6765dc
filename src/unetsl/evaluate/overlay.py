"""An overlay PNG of a prediction on its image, so a person can see what was found."""

from __future__ import annotations

import os

import numpy as np
from skimage.segmentation import find_boundaries

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


def cells_png(path: str | os.PathLike, image: np.ndarray, cells: np.ndarray, *,
              frames: int = 3) -> None:
    """Cell outlines coloured by id on the image, for up to ``frames`` time points side by
    side (the middle z plane of each), so that a person sees at a glance whether cells are
    whole and keep their colour (id) over time.

    image, cells : (t, c, z, y, x) arrays of the same (t, z, y, x) size; cells holds ids.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if image.shape[0] != cells.shape[0] or image.shape[2:] != cells.shape[2:]:
        raise UnetslError(f"image (t, c, z, y, x) = {image.shape} and cells {cells.shape} "
                          "differ in size")
    n_t = image.shape[0]
    chosen = np.unique(np.linspace(0, n_t - 1, min(frames, n_t)).round().astype(int))
    z = image.shape[2] // 2
    palette = np.random.default_rng(0).uniform(0.25, 1.0, size=(int(cells.max()) + 1, 3))
    fig, axes = plt.subplots(1, len(chosen), figsize=(5 * len(chosen), 5.4))
    for ax, t in zip(np.atleast_1d(axes), chosen):
        raw = image[t, 0, z].astype(np.float32)
        low, high = np.percentile(raw, [1, 99.8])
        gray = np.clip((raw - low) / max(high - low, 1e-6), 0, 1)
        rgb = np.repeat(gray[..., None], 3, axis=-1) * 0.8
        ids = cells[t, 0, z].astype(np.int64)
        edge = find_boundaries(ids, mode="inner") & (ids > 0)
        rgb[edge] = palette[ids[edge]]
        ax.imshow(rgb, interpolation="nearest")
        ax.set_title(f"time point {t + 1}/{n_t}: {len(np.unique(ids[ids > 0]))} cells "
                     "(colour = id)", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
