"""Review cells: rank the cells of a Labels layer by confidence, step through the least
confident ones to fix them with napari's paint/fill/erase tools, retrain (issue 30).

Ranking scores the Labels layer as it is (:func:`unetsl.cells.measure.measure`, confidence),
so edits count. Retrain is the worker task ``retrain`` (partial labels of the corrected cells,
``train_model --from``, predict), then Segment cells' :func:`~unetsl.cells.files.segment_array`
and :func:`~unetsl.data.corrections.keep_corrections`: the user's cells are never lost. Only
the reviewed Labels layer and this widget's "tuned prob" layers are replaced.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, FileEdit, Label, LineEdit, PushButton, SpinBox
from scipy import ndimage as ndi
from superqt.utils import ensure_main_thread

from unetsl.cells.files import choose_boundary_channel, segment_array
from unetsl.cells.measure import measure
from unetsl.cells.settings import MODES, CellSettings
from unetsl.data.corrections import keep_corrections, pasted_ids
from unetsl.errors import UnetslError
from unetsl.napari.cells_table import CellsTable
from unetsl.napari.layers import (
    follow_layers,
    from_tczyx,
    layer_axes,
    layer_names,
    layer_spacing,
    layer_tczyx,
    like_layer,
    put_layer,
    show_cell,
)
from unetsl.napari.process import worker
from unetsl.napari.tasks import (
    ScrollingDock,
    TaskProgress,
    add_tooltips,
    notify,
    run_task,
    show_warning_line,
    status_label,
)

if TYPE_CHECKING:
    import napari

#: hover help of the fields that do not carry their own
TOOLTIPS = {
    "image": "the image the cells are of (Retrain trains on it and predicts it again)",
    "cells": "the cells to review and correct (a Labels layer, e.g. of Segment cells)",
    "probabilities": "the probability map the cells came from (a Predict \"prob\" layer)",
    "mode": "how the cells were segmented: membrane or foreground",
    "channel": "the model output channel the probability layer shows (\"prob K\": K)",
    "model_file": "the model that predicted the map; NAME.json must lie beside it",
    "steps": 'fine-tuning steps; 0 = the config\'s "fine-tuning steps" (300 by default)',
    "rank_button": "score every cell of the Labels layer as it is now; least confident first",
    "previous_button": "the cell before in the ranking",
    "next_button": "the next less-than-clear cell: centred, zoomed, selected for painting",
    "done_button": "mark this cell (and the label painted last) corrected, or deleted when "
                   "you erased it (known background); go to the next",
    "retrain_button": "fine-tune on the corrected cells, predict, segment; they stay as drawn",
    "stop_button": "stop fine-tuning after this batch; predict with the model as it is then",
}


class ReviewWidget(ScrollingDock):
    """Review the least confident cells, correct them, retrain (issue 30)."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.synchronous = False  # tests: run in the calling thread
        self.worker: Any = None
        self.progress: TaskProgress | None = None
        self.ranking: list[tuple[int, int, float]] = []  # (id, t, confidence), ascending
        self.position = -1
        self.corrected: set[int] = set()
        self.ranked_cells: np.ndarray | None = None  # the labels as ranked (for deletions)
        self.erased: np.ndarray | None = None  # where the user deleted false cells
        self.note = ""  # what the last retrain did, said before the new ranking
        self.image = ComboBox(label="image", choices=layer_names(self.viewer, "image"),
                              nullable=True)
        self.axes = LineEdit(label="axes", tooltip="axis letters of the image: t, c, z, y, x")
        self.cells = ComboBox(label="cells", choices=layer_names(self.viewer, "labels"),
                              nullable=True)
        self.probabilities = ComboBox(label="probabilities", nullable=True, choices=layer_names(
            self.viewer, "image", floating=True))
        self.mode = ComboBox(label="mode", choices=list(MODES), value=CellSettings().mode)
        self.channel = SpinBox(label="channel", min=0, max=255, value=0)
        self.model_file = FileEdit(label="model", mode="r", filter="*.h5 *.keras")
        self.steps = SpinBox(label="steps", min=0, max=10**6, value=0)
        self.rank_button, self.previous_button, self.next_button, self.done_button = (
            PushButton(text=text) for text in ("Rank", "Previous", "Next", "Done"))
        self.counter = Label(value="corrected: 0 cells")
        self.retrain_button = PushButton(text="Retrain")
        self.stop_button = PushButton(text="Stop", enabled=False)
        self.status = status_label()
        self.form.extend([self.image, self.axes, self.cells, self.probabilities, self.mode,
                          self.channel, self.model_file, self.steps, self.rank_button,
                          self.previous_button, self.next_button, self.done_button,
                          self.counter, self.retrain_button, self.stop_button, self.status])
        add_tooltips(self, TOOLTIPS)
        self.table = CellsTable(self.go_to)
        self.form.native.layout().addWidget(self.table)
        self.rank_button.clicked.connect(self.rank)
        self.previous_button.clicked.connect(lambda: self.step(-1))
        self.next_button.clicked.connect(lambda: self.step(1))
        self.done_button.clicked.connect(self.done)
        self.retrain_button.clicked.connect(self.retrain)
        self.stop_button.clicked.connect(self.stop)
        follow_layers(self.viewer, [self.image, self.cells, self.probabilities], self.axes)

    # --- layers ----------------------------------------------------------------------
    def _layer(self, combo: ComboBox) -> Any:
        if combo.value not in self.viewer.layers:
            raise UnetslError(f"choose the {combo.label} layer")
        return self.viewer.layers[combo.value]

    def _axes(self, layer: Any) -> str:
        """The image's axes for ``layer``, without c when it has none (labels, maps)."""
        axes = self.axes.value.strip().lower()
        for guess in (axes, axes.replace("c", "")):
            if len(guess) == layer.ndim:
                return guess
        return layer_axes(layer)

    def _tzyx(self, layer: Any) -> np.ndarray:
        return layer_tczyx(layer, self._axes(layer))[:, 0]

    # --- ranking and stepping --------------------------------------------------------
    def rank(self) -> None:
        """Confidence of every cell of the Labels layer from the probability layer, in a
        worker thread; the table lists them least confident first."""
        try:
            layer = self._layer(self.cells)
            labels = self._tzyx(layer)
            maps = self._tzyx(self._layer(self.probabilities))
            spacing = layer_spacing(layer, self._axes(layer))
        except UnetslError as err:
            self.status.value = notify(err)
            return
        key = str(self.mode.value)  # measure's membrane= or foreground=

        self.ranked_cells = np.array(labels, copy=True)  # the layer may be edited in place

        def task() -> dict[str, np.ndarray]:
            return measure(labels, spacing, confidence=True, **{key: maps})

        self.status.value = "ranking ..."
        self.worker = run_task(task, self._ranked, on_error=self._failed,
                               synchronous=self.synchronous)

    def _ranked(self, table: dict[str, np.ndarray]) -> None:
        order = np.argsort(table["confidence"], kind="stable")
        self.ranking = [(int(table["id"][k]), int(table["t"][k]),
                         float(table["confidence"][k])) for k in order]
        self.position = -1
        self.table.set_table({"id": table["id"][order], "t": table["t"][order],
                              "confidence": table["confidence"][order]})
        lowest = f"; lowest confidence {self.ranking[0][2]:.3f}" if self.ranking else ""
        self.status.value = f"{self.note}{len(self.ranking)} cells ranked{lowest}: press Next"
        self.note = ""

    def step(self, by: int) -> None:
        """Go ``by`` places along the ranking (Next: 1, Previous: -1)."""
        if not self.ranking:
            self.status.value = "press Rank first"
            return
        self.position = int(np.clip(self.position + by, 0, len(self.ranking) - 1))
        self.show_current()

    def go_to(self, cell: int, t: int) -> None:
        """A table row was clicked: that cell becomes the current one."""
        found = [k for k, (i, f, _) in enumerate(self.ranking) if (i, f) == (cell, t)]
        if found:
            self.position = found[0]
            self.show_current()

    def show_current(self) -> None:
        """Centre, zoom and select the current cell in the Labels layer for editing."""
        cell, t, score = self.ranking[self.position]
        try:
            layer = self._layer(self.cells)
        except UnetslError as err:
            self.status.value = notify(err)
            return
        show_cell(self.viewer, layer, self._axes(layer), self._tzyx(layer), cell, t)
        self.viewer.layers.selection.active = layer  # the paint tools act on it
        mark = " (corrected)" if cell in self.corrected else ""
        self.status.value = (f"cell {cell} at t {t}: confidence {score:.3f}, "
                             f"{self.position + 1} of {len(self.ranking)}{mark}")

    def done(self) -> None:
        """Mark the current cell (and the label painted last, a split-off piece) corrected
        and go on to the next cell."""
        if self.position < 0:
            self.status.value = "press Rank and Next first"
            return
        layers = self.viewer.layers
        if self.cells.value not in layers:
            return
        layer = layers[self.cells.value]
        cell, t = self.ranking[self.position][:2]
        now = self._tzyx(layer)
        if self.ranked_cells is not None and not (now[t] == cell).any():
            self._erased(t, cell, now.shape)  # deleted: a false cell, known background
        else:
            self.corrected.add(cell)
        self.corrected.update({int(layer.selected_label)} - {0, cell} & set(
            np.unique(now).tolist()))
        self._count()
        if self.position + 1 < len(self.ranking):
            self.step(1)

    def _erased(self, t: int, cell: int, shape: tuple[int, ...]) -> None:
        """Remember where the deleted cell was (as ranked), in its frame."""
        if self.erased is None or self.erased.shape != shape:
            self.erased = np.zeros(shape, dtype=bool)
        self.erased[t] |= self.ranked_cells[t] == cell  # type: ignore[index]

    def _count(self) -> None:
        deleted = 0 if self.erased is None else int(ndi.label(self.erased)[1])
        self.counter.value = (f"corrected: {len(self.corrected)} cells"
                              + (f", {deleted} deleted" if deleted else ""))

    # --- retraining ------------------------------------------------------------------
    def retrain(self) -> None:
        """Fine-tune on the corrected cells in the training worker process, predict the
        image again, segment it and keep the corrections; then rank again."""
        try:
            job, layers = self._retrain_job()
        except UnetslError as err:
            self.status.value = notify(err)
            return
        progress = self.progress = TaskProgress(f"retrain: predict {job['image_name']}")
        mode, channel, spacing = str(self.mode.value), int(self.channel.value), job.pop("spacing")

        def task() -> tuple[dict[str, Any], Any]:
            result = worker("training").call("retrain", progress=progress,
                                             on_event=self._event, **job)
            probs = result["prediction"].probabilities[-1]
            if channel >= probs.shape[1]:
                raise UnetslError(f"channel {channel}: the model gives {probs.shape[1]}")
            boundary = choose_boundary_channel(CellSettings(), mode, channel, probs.shape[1],
                                               job["image_name"])
            return result, segment_array(
                probs[:, channel], spacing, mode=mode, settings=CellSettings(),
                boundary=None if boundary is None else probs[:, boundary])

        self.retrain_button.enabled, self.stop_button.enabled = False, True
        self.status.value = f"fine-tuning on {len(job['corrected'])} corrected cells ..."
        self.worker = run_task(task, lambda done: self._retrained(*done, job, *layers),
                               on_error=self._failed, synchronous=self.synchronous)

    def _retrain_job(self) -> tuple[dict[str, Any], tuple[Any, Any]]:
        """The retrain task's arguments from the fields and layers, checked; the layers."""
        model = self.model_file.line_edit.value.strip()
        if model in ("", ".") or not Path(model).is_file():
            raise UnetslError(f"choose the model file that predicted the map ({model!r} is "
                              "not a file)")
        if not self.corrected and self.erased is None:
            raise UnetslError("no corrected cells: correct a cell and press Done first")
        image, cells = self._layer(self.image), self._layer(self.cells)
        steps = int(self.steps.value)
        return {"model": str(Path(model).resolve()), "image_name": image.name,
                "image": layer_tczyx(image, self.axes.value), "cells": self._tzyx(cells),
                "corrected": sorted(self.corrected), "erased": self.erased,
                "settings": {"fine-tuning steps": steps} if steps else {},
                "spacing": layer_spacing(cells, self._axes(cells))}, (image, cells)

    @ensure_main_thread
    def _event(self, kind: str, *payload: Any) -> None:
        """Epoch lines and warnings of the fine-tuning in the status line."""
        if kind == "line":
            self.status.value = payload[0]
        elif kind == "log" and payload[0] in ("warning", "error"):
            self.status.value = show_warning_line(payload[1])

    def stop(self) -> None:
        """Stop fine-tuning after the current batch (-tuned-latest is saved and used)."""
        if not self.retrain_button.enabled:
            worker("training").stop()
            self.status.value = "stopping after this batch ..."

    def _finish(self) -> None:
        self.retrain_button.enabled, self.stop_button.enabled = True, False
        if self.progress is not None:
            self.progress.close()
            self.progress = None

    def _failed(self, error: BaseException) -> None:
        self._finish()
        self.status.value = notify(error)

    def _retrained(self, result: dict[str, Any], cells: Any, job: dict[str, Any],
                   image: Any, layer: Any) -> None:
        """New labels (corrections kept) into the Labels layer, the tuned map as "<image>
        tuned prob K" layers, the tuned model in the model field; then rank again."""
        self._finish()
        self.model_file.value = result["model"]
        if layer not in self.viewer.layers or image not in self.viewer.layers:
            self.status.value = f"retrained {result['model']}; its layers were closed"
            return
        merged = keep_corrections(cells.labels, job["cells"], job["corrected"],
                                  erased=job["erased"])
        self.corrected = set(pasted_ids(merged, job["cells"], job["corrected"]).values())
        self._count()
        layer.data = from_tczyx(merged[:, None], self._axes(layer))
        axes = self.axes.value.strip().lower()
        out_axes, probs = axes.replace("c", ""), result["prediction"].probabilities[-1]
        for k in range(probs.shape[1]):
            shown = put_layer(self.viewer, "image", from_tczyx(probs[:, k:k + 1], out_axes),
                              f"{image.name} tuned prob {k}", colormap="magma",
                              contrast_limits=(0.0, 1.0), blending="additive",
                              visible=k == int(self.channel.value),
                              **like_layer(image, axes, out_axes))
            if k == int(self.channel.value):
                self.probabilities.value = shown.name
        self.viewer.layers.selection.active = layer
        self.note = f"retrained{' (stopped)' * result['stopped']}: {Path(result['model']).name}; "
        self.rank()
