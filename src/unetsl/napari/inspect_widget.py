"""Inspect: the patches and per-head targets that training sees, as layers.

The patches are those inspect_data_sources draws: :func:`unetsl.data.inspect.build_pages`
samples them as training does (stride, jitter, rotations, augmentation, seeded) and
:func:`unetsl.data.inspect.panels` splits each into input, label and target channels (a
cerberus head at its own resolution). Each panel becomes a layer with the patches along
its first axis; a head below full resolution is placed on the input's pixels by scale and
translation rather than upsampled.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import Container, FileEdit, Label, PushButton, SpinBox, TextEdit

from unetsl.errors import UnetslError
from unetsl.napari.layers import put_layer
from unetsl.napari.tasks import notify, run_task

if TYPE_CHECKING:
    import napari

    from unetsl.data.inspect import Page, Panel

LayerData = tuple[np.ndarray, dict[str, Any], str]
AXES = ("patch", "z", "y", "x")
COLORMAPS = {"input": "gray", "binary": "magma", "linear": "viridis", "weights": "viridis"}


def placement(panel: Panel) -> tuple[list[float], list[float]]:
    """(scale, translate) of a panel over (patch, z, y, x), in input-patch pixels."""
    _, y_size, x_size = panel.image.shape
    scale, translate = [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]
    if panel.z_map is not None:
        first = np.flatnonzero(np.asarray(panel.z_map) == 0)
        if len(first):
            scale[1], translate[1] = float(len(first)), float(first.mean())
    if panel.extent is not None:
        left, right, bottom, top = panel.extent
        scale[2], scale[3] = (bottom - top) / y_size, (right - left) / x_size
        translate[2], translate[3] = top + scale[2] / 2, left + scale[3] / 2
    return scale, translate


def patch_layers(page: Page, count: int, prefix: str) -> list[LayerData]:
    """One layer per panel title of ``count`` patches of ``page``, the patches stacked."""
    from unetsl.data.inspect import panels

    stacks: dict[str, list[Panel]] = {}
    for patch in page.patches(0, count):
        for panel in panels(page, patch):
            stacks.setdefault(panel.title.replace("\n", ", "), []).append(panel)
    layers = []
    for title, shown in stacks.items():
        data = np.stack([p.image for p in shown])
        scale, translate = placement(shown[0])
        kind = shown[0].kind
        options: dict[str, Any] = {"name": f"{prefix} {title}", "scale": scale,
                                   "translate": translate, "axis_labels": AXES}
        if kind == "label" and np.issubdtype(data.dtype, np.integer):
            layers.append((data, options, "labels"))
            continue
        options["colormap"] = COLORMAPS.get(kind, "gray")
        if kind == "binary":
            options["contrast_limits"] = (0.0, 1.0)
        layers.append((data.astype(np.float32), options, "image"))
    return layers


class InspectWidget(Container):
    """Show training patches of one data source of a config: input, label, every target."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.synchronous = False  # tests: run in the calling thread
        self.worker: Any = None
        self.config_file = FileEdit(label="config", mode="r", filter="*.json")
        self.source = SpinBox(label="data source", min=0, max=999, value=0)
        self.patches = SpinBox(label="patches", min=1, max=50, value=4)
        self.seed = SpinBox(label="seed", min=0, max=2**31 - 1, value=0,
                            tooltip="seed of the sampling and augmentation shown")
        self.show_button = PushButton(text="Show patches")
        self.status = Label(value="")
        self.summary = TextEdit(label="summary", value="")
        self.summary.native.setReadOnly(True)
        self.extend([self.config_file, self.source, self.patches, self.seed, self.show_button,
                     self.status, self.summary])
        self.show_button.clicked.connect(self.run)

    def run(self) -> None:
        """Sample the patches in a worker thread (or here when ``synchronous``)."""
        from unetsl.config.model_config import Config
        from unetsl.data.inspect import build_pages
        from unetsl.training.setup import training_shapes

        path = Path(str(self.config_file.value))
        index, count, seed = int(self.source.value), int(self.patches.value), int(self.seed.value)
        try:
            if not path.is_file():
                raise UnetslError(f"{path}: config file does not exist")
            cfg = Config.load(path)
            n_sources = len(cfg["data sources"])
            if not 0 <= index < n_sources:
                raise UnetslError(f"data source {index}: {path} has {n_sources} data "
                                  "source(s)")
        except UnetslError as err:
            self.status.value = notify(err)
            return

        def task() -> tuple[Page, list[LayerData]]:
            patch_shape, n_labels = training_shapes(cfg)
            page = build_pages(cfg, patch_shape=patch_shape, n_labels=n_labels, seed=seed,
                               sources=[index])[0]
            return page, patch_layers(page, count, f"source {index}")

        self.show_button.enabled = False
        self.status.value = f"sampling source {index} ..."
        self.worker = run_task(task, self._show, on_error=self._failed,
                               synchronous=self.synchronous)

    def _failed(self, error: BaseException) -> None:
        self.show_button.enabled = True
        self.status.value = notify(error)

    def _show(self, made: tuple[Page, list[LayerData]]) -> None:
        self.show_button.enabled = True
        page, layers = made
        for data, options, kind in layers:
            options = dict(options)
            put_layer(self.viewer, kind, data, options.pop("name"), **options)
        self.summary.value = "\n".join(page.summary)
        shown = min(len(page.order), int(self.patches.value))
        self.status.value = f"{len(layers)} layers of {shown} patches"
