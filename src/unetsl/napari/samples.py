"""File > Open Sample > unetsl: the synthetic epithelium of :mod:`unetsl.data.synthetic`.

Something to try the widgets on at once, without data or a download: a 2D movie and a 3D
stack, each with its membrane labels (bit masks: 1 membrane, 3 vertex) for training, on
the pixel size the example files carry.
"""

from __future__ import annotations

from typing import Any

from unetsl.data.synthetic import (
    PIXEL_SIZE_UM,
    Z_SPACING_UM,
    epithelium_stack,
    epithelium_time_series,
)

LayerData = tuple[Any, dict[str, Any], str]


def _layers(sample: Any, name: str, axes: str, scale: tuple[float, ...]) -> list[LayerData]:
    units = tuple("pixel" if a == "t" else "micrometer" for a in axes)  # frames: no unit
    placed = {"scale": scale, "axis_labels": tuple(axes), "units": units}
    return [(sample.image, {"name": name, **placed}, "image"),
            (sample.labels, {"name": f"{name} labels", "opacity": 0.5, "visible": False,
                             **placed}, "labels")]


def epithelium_movie() -> list[LayerData]:
    """A 2D time series (t, y, x) of a slowly moving epithelium and its membrane labels."""
    sample = epithelium_time_series((5, 128, 128), seed=0)
    return _layers(sample, "epithelium movie", "tyx", (1.0, PIXEL_SIZE_UM, PIXEL_SIZE_UM))


def epithelium_3d() -> list[LayerData]:
    """A 3D stack (z, y, x) of columnar epithelial cells and its membrane labels."""
    sample = epithelium_stack((24, 96, 96), seed=0)
    return _layers(sample, "epithelium stack", "zyx", (Z_SPACING_UM, PIXEL_SIZE_UM,
                                                        PIXEL_SIZE_UM))
