"""Segment cells: a probability layer -> tracked cell labels, their measurements, the files.

The work is :func:`unetsl.cells.files.segment_array`, the core of segment_cells, so the
labels equal segment_cells' on the same map; saving calls the writers segment_cells uses
(CSV, ImageJ ROI zip, meshes).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, LineEdit, PushButton, SpinBox

from unetsl.cells.files import (
    MESH_FORMATS,
    check_cell_file,
    segment_array,
    with_extension,
    write_cell_file,
)
from unetsl.cells.settings import MODES, CellSettings
from unetsl.errors import UnetslError
from unetsl.napari.cells_table import CellsTable
from unetsl.napari.layers import (
    follow_layers,
    from_tczyx,
    layer_names,
    layer_spacing,
    layer_tczyx,
    layer_unit,
    like_layer,
    put_layer,
    show_cell,
)
from unetsl.napari.tasks import ScrollingDock, add_tooltips, notify, run_task, status_label

if TYPE_CHECKING:
    import napari

    from unetsl.cells.files import CellsResult


#: a membrane map that never exceeds this comes from a model that has not learned much yet
UNDERTRAINED_PEAK = 0.6


#: hover help of the fields that do not carry their own
TOOLTIPS = {
    "probabilities": "a probability layer of Predict (float pixels): channel 0 = membrane",
    "mode": "membrane: cells between membranes (watershed); foreground: connected objects",
    "boundary": "foreground mode: the objects' boundary (channel 1 of a model trained with "
                '"instance labels"); each interior it leaves seeds one object, so touching '
                "nuclei part",
    "tracking": "give a cell the same id in every time point it is seen",
    "run_button": "segment, track and measure; the table below lists the cells",
    "mesh_format": "file format of the cell meshes (3D)",
    "csv_button": "the table as CSV (t counts from 0; ImageJ ROI positions from 1)",
    "rois_button": "every cell outline as an ImageJ ROI set (open in Fiji's ROI Manager)",
    "meshes_button": "one mesh file per cell and time point, in physical units",
}


class CellsWidget(ScrollingDock):
    """Cells from the selected probability layer (channel 0 of predict = membrane), tracked
    over time; the table below lists them (click a row to select the cell)."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.synchronous = False  # tests: run in the calling thread
        self.worker: Any = None
        self.result: CellsResult | None = None
        self.labels_layer: Any = None
        self.out_axes = ""
        self.spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
        self.probabilities = ComboBox(label="probabilities",
                                      choices=layer_names(self.viewer, "image", floating=True),
                                      nullable=True)
        self.axes = LineEdit(label="axes", tooltip="axis letters of the layer: t, c, z, y, x")
        self.channel = SpinBox(label="channel", min=0, max=255, value=0,
                               tooltip="the channel of the membrane (foreground) probability "
                                       "when the layer has several")
        self.mode = ComboBox(label="mode", choices=list(MODES), value=CellSettings().mode)
        self.boundary = ComboBox(label="boundary", nullable=True, value=None,
                                 choices=layer_names(self.viewer, "image", floating=True))
        self.min_size = SpinBox(label="min size", min=0, max=10**9,
                                value=CellSettings().min_size,
                                tooltip="smallest cell in pixels (voxels in 3D)")
        self.tracking = CheckBox(text="track over time", value=True)
        self.run_button = PushButton(text="Segment cells")
        self.status = status_label()
        self.mesh_format = ComboBox(label="mesh format", choices=list(MESH_FORMATS),
                                    value="ply")
        self.csv_button = PushButton(text="Save CSV ...")
        self.rois_button = PushButton(text="Save ROI zip ...")
        self.meshes_button = PushButton(text="Save meshes ...")
        self.form.extend([self.probabilities, self.axes, self.channel, self.mode, self.boundary,
                          self.min_size, self.tracking, self.run_button, self.status,
                          self.mesh_format, self.csv_button, self.rois_button,
                          self.meshes_button])
        add_tooltips(self, TOOLTIPS)
        self.table = CellsTable(self.select_cell)
        self.form.native.layout().addWidget(self.table)
        self.run_button.clicked.connect(self.run)
        self.csv_button.clicked.connect(lambda: self.save("table"))
        self.rois_button.clicked.connect(lambda: self.save("rois"))
        self.meshes_button.clicked.connect(lambda: self.save("meshes"))
        follow_layers(self.viewer, [self.probabilities], self.axes)
        for event in ("inserted", "removed", "reordered"):  # never chosen for the user
            getattr(self.viewer.layers.events, event).connect(self._boundary_choices)

    def _boundary_choices(self, _event: Any = None) -> None:
        self.boundary.reset_choices()  # a nullable combo keeps "-----" (None) as it is

    def settings(self) -> CellSettings:
        """The cell settings: the defaults with this widget's min size (checked)."""
        return CellSettings.from_overrides({"cell min size": int(self.min_size.value)})

    # --- segmenting ------------------------------------------------------------------
    def run(self) -> None:
        """Segment, track and measure in a worker thread (or here when ``synchronous``)."""

        try:
            name = self.probabilities.value
            if name not in self.viewer.layers:
                raise UnetslError("choose a probability layer")
            layer = self.viewer.layers[name]
            axes = self.axes.value.strip().lower()
            image = layer_tczyx(layer, axes)
            channel = int(self.channel.value)
            if channel >= image.shape[1]:
                raise UnetslError(f"layer {name!r}: channel {channel} does not exist; it has "
                                  f"{image.shape[1]} channel(s)")
            spacing = layer_spacing(layer, axes)
            settings = self.settings()
        except UnetslError as err:
            self.status.value = notify(err)
            return
        maps = image[:, channel]
        mode, tracking = str(self.mode.value), bool(self.tracking.value)
        try:
            boundary = self._boundary_map(axes)
        except UnetslError as err:
            self.status.value = notify(err)
            return

        def task() -> CellsResult:
            try:
                return segment_array(maps, spacing, mode=mode, settings=settings,
                                     tracking=tracking, boundary=boundary)
            except UnetslError as err:  # say which layer
                raise UnetslError(f"layer {name!r}: {err}") from None

        self.run_button.enabled = False
        self.status.value = f"segmenting {name} ..."
        peak = float(np.max(maps)) if maps.size else 0.0
        self.worker = run_task(task, lambda result: self._show(result, layer, axes, spacing,
                                                               peak),
                               on_error=self._failed, synchronous=self.synchronous)

    def _boundary_map(self, axes: str) -> np.ndarray | None:
        """The chosen boundary layer (t, z, y, x), read with the probabilities' axes."""
        name = self.boundary.value
        if name is None:
            return None
        if name not in self.viewer.layers:
            raise UnetslError(f"boundary layer {name!r} is gone; choose another")
        return layer_tczyx(self.viewer.layers[name], axes)[:, 0]

    def _failed(self, error: BaseException) -> None:
        self.run_button.enabled = True
        self.status.value = notify(error)

    def _show(self, result: CellsResult, layer: Any, axes: str,
              spacing: tuple[float, float, float], peak: float = 1.0) -> None:
        self.run_button.enabled = True
        self.result, self.spacing = result, spacing
        out_axes = "".join(a for a in axes if a != "c")
        self.out_axes = out_axes
        self.labels_layer = put_layer(self.viewer, "labels",
                                      from_tczyx(result.labels[:, None], out_axes),
                                      f"{layer.name} cells", **like_layer(layer, axes, out_axes))
        self.table.set_table(result.table, layer_unit(layer))
        ids = result.table.get("id")
        n_cells = len(set(ids.tolist())) if ids is not None else 0
        tracks = f", {len(result.tracks)} tracks" if result.tracks else ""
        hint = (f"; the probabilities peak at {peak:.2f}: is the model trained enough?"
                if peak < UNDERTRAINED_PEAK else "")
        self.status.value = (f"{n_cells} cells in {result.labels.shape[0]} time point(s)"
                             f"{tracks}{hint}")
        flat = result.labels.shape[1] == 1  # 2D (t, 1, y, x): ROIs; 3D: meshes
        self.rois_button.visible, self.meshes_button.visible = flat, not flat
        self.mesh_format.visible = not flat

    def select_cell(self, cell: int, t: int) -> None:
        """Show cell ``cell`` alone in the labels layer, at time point ``t``, centred and
        zoomed so that it fills about a third of the canvas."""
        layer = self.labels_layer
        if layer is None or layer not in self.viewer.layers or self.result is None:
            return
        show_cell(self.viewer, layer, self.out_axes, self.result.labels, cell, t, alone=True)

    # --- files -----------------------------------------------------------------------
    def _folder(self) -> Path:
        """Where save dialogs open: the folder of the file the segmented layer (or the layer
        it was predicted from) came from, else the working folder."""
        for layer in self.viewer.layers:
            source = getattr(getattr(layer, "source", None), "path", None)
            if source and layer.name in (self.probabilities.value or "", *self._origins()):
                return Path(source).parent
        return Path.cwd()

    def _origins(self) -> list[str]:
        name = str(self.probabilities.value or "")
        return [name.rsplit(" prob ", 1)[0]] if " prob " in name else []

    def save(self, what: str, path: str | Path | None = None) -> Path | None:
        """Write the table ("table"), the ROI set ("rois", 2D) or the meshes ("meshes", 3D)
        with segment_cells' writers (``unetsl.cells.files.CELL_FILES``); asks for the path
        when none is given."""

        try:
            if self.result is None:
                raise UnetslError("segment cells first")
            check_cell_file(what, f"layer {self.labels_layer.name!r}"
                            if self.labels_layer is not None else "the cells",
                            self.result.labels.shape[1])
            if path is None:
                path = _ask_path(what, self._folder())
                if path is None:
                    return None
            path = write_cell_file(what, with_extension(path, what), self.result, self.spacing,
                                   str(self.mesh_format.value))
        except UnetslError as err:
            self.status.value = notify(err)
            return None
        self.status.value = f"wrote {path}"
        return path


def _ask_path(what: str, folder: Path) -> str | None:
    """A save dialog for the table and ROI set, a folder dialog for meshes; both open in
    ``folder`` (where the probabilities' file lies), not napari's working folder."""
    from qtpy.QtWidgets import QFileDialog

    if what == "meshes":
        chosen = QFileDialog.getExistingDirectory(None, "Folder for the cell meshes",
                                                  str(folder))
        return chosen or None
    caption, pattern, name = (("Save the cell table", "CSV (*.csv)", "cells.csv")
                              if what == "table" else
                              ("Save the ImageJ ROI set", "ROI zip (*.zip)", "cells-rois.zip"))
    path, _ = QFileDialog.getSaveFileName(None, caption, str(folder / name), pattern)
    return path or None
