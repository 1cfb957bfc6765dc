"""Predict: a model file and an image layer -> probability and label layers, as predict_image.

The widget only gathers settings and shows results; the prediction is
:func:`unetsl.predict.in_memory.predict_array` with a :class:`~unetsl.predict.job.PredictionJob`
(the settings predict_image edits), so the labels equal predict_image's on the same image.
It runs in the plugin's worker process (:mod:`unetsl.napari.process`: TensorFlow never
loads into napari), with napari's progress bar; cancel stops it between batches. Results
never replace a layer the plugin did not make.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    FileEdit,
    LineEdit,
    PushButton,
    SpinBox,
)
from superqt.utils import ensure_main_thread

from unetsl.errors import UnetslError
from unetsl.napari.layers import (
    follow_layers,
    from_tczyx,
    layer_names,
    layer_tczyx,
    like_layer,
    put_layer,
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

    from unetsl.predict.in_memory import ArrayPrediction


def parse_triple(text: str, key: str) -> list[int] | None:
    """ "auto" (or nothing) -> None; "z, y, x" -> three integers; else a one-line error."""
    text = text.strip().lower()
    if text in ("", "auto", "none", "null"):
        return None
    parts = text.replace(",", " ").replace("x", " ").split()
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 3:
        raise UnetslError(f'"{key}" must be auto or three integers z, y, x; got {text!r}')
    return values


#: hover help of the fields that do not carry their own
TOOLTIPS = {
    "model_file": "a trained model: NAME-best.h5, NAME-latest.h5, .keras, or the original's .h5",
    "image": "the image layer to predict",
    "all_outputs": "predict every output of a cascade model, not only the last",
    "views": 'test-time augmentation ("test time augmentation"): each tile is also predicted '
             "turned and mirrored, and the 8 views are averaged",
    "run_button": "predict; adds probability and label layers on the image's scale",
    "cancel_button": "stop between batches; nothing is added",
}


class PredictWidget(ScrollingDock):
    """Predict the selected image layer with a model file (.h5 / .keras, also the original's
    .h5); adds "<image> prob <k>" and "<image> predicted labels" layers on the image's scale."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.synchronous = False  # tests: run in the calling thread
        self.progress: TaskProgress | None = None
        self.worker: Any = None
        self.result: ArrayPrediction | None = None
        self.model_file = FileEdit(label="model", mode="r", filter="*.h5 *.keras")
        self.image = ComboBox(label="image", choices=layer_names(self.viewer, "image"),
                              nullable=True)
        self.axes = LineEdit(label="axes", tooltip="axis letters of the layer: t, c, z, y, x")
        self.batch_size = SpinBox(label="batch size", min=1, max=4096, value=16,
                                  tooltip="tiles of the training patch size per batch")
        self.tile = LineEdit(label="tile shape", value="auto",
                             tooltip="z, y, x of a tile, or auto (chosen for the image)")
        self.overlap = LineEdit(label="overlap", value="auto",
                                tooltip="z, y, x tile overlap, or auto (from the receptive "
                                        "field: seamless)")
        self.all_outputs = CheckBox(text="all outputs (cascade)", value=False)
        self.views = CheckBox(text="average flipped and turned views (8x slower)", value=False)
        self.run_button = PushButton(text="Predict")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = status_label()
        self.form.extend([self.model_file, self.image, self.axes, self.batch_size, self.tile,
                          self.overlap, self.all_outputs, self.views, self.run_button,
                          self.cancel_button, self.status])
        add_tooltips(self, TOOLTIPS)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        follow_layers(self.viewer, [self.image], self.axes)

    # --- running ---------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """The prediction settings of the fields (what predict_image -D would set), checked;
        the worker process makes the PredictionJob of them (the model file decides the
        normalisation)."""
        model = self.model_file.line_edit.value.strip()
        if model in ("", ".") or Path(model).is_dir():  # an empty field reads as a folder
            raise UnetslError("choose a model file (.h5 or .keras)"
                              + (f"; {model} is a folder" if model not in ("", ".") else ""))
        if not Path(model).is_file():
            raise UnetslError(f"model file {model!r} does not exist")
        if self.image.value not in self.viewer.layers:
            raise UnetslError("choose an image layer to predict")
        return {"batch size": int(self.batch_size.value),
                "tile shape": parse_triple(self.tile.value, "tile shape"),
                "overlap": parse_triple(self.overlap.value, "overlap"),
                "all outputs": bool(self.all_outputs.value),
                "test time augmentation": bool(self.views.value)}

    def run(self) -> None:
        """Predict in the worker process, waited for in a thread (or here when
        ``synchronous``); napari's process never loads TensorFlow."""
        try:
            settings = self.settings()
            layer = self.viewer.layers[self.image.value]
            axes = self.axes.value.strip().lower()
            image = layer_tczyx(layer, axes)
        except UnetslError as err:
            self.status.value = notify(err)
            return
        progress = self.progress = TaskProgress(f"predict {layer.name}")
        model = str(Path(str(self.model_file.value)).resolve())

        def task() -> ArrayPrediction:
            return worker("prediction").call(
                "predict", progress=progress, on_event=self._event, model=model,
                image_name=layer.name, image=image, settings=settings)

        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.status.value = f"predicting {layer.name} ..."
        self.worker = run_task(task, lambda result: self._show(result, layer, axes),
                               on_error=self._failed, synchronous=self.synchronous)

    @ensure_main_thread
    def _event(self, kind: str, *payload: Any) -> None:
        """Warnings of the worker process in the status line (and napari's notifications)."""
        if kind == "log" and payload[0] in ("warning", "error"):
            self.status.value = show_warning_line(payload[1])

    def cancel(self) -> None:
        if self.progress is not None:
            self.progress.cancel()
            worker("prediction").cancel()

    def _finish(self) -> None:
        self.run_button.enabled, self.cancel_button.enabled = True, False
        if self.progress is not None:
            self.progress.close()

    def _failed(self, error: BaseException) -> None:
        self._finish()
        self.status.value = notify(error)

    def _show(self, result: ArrayPrediction, layer: Any, axes: str) -> None:
        """Probability and label layers on the image's scale, named after the image."""
        self._finish()
        self.result = result
        out_axes = "".join(a for a in axes if a != "c")
        place = like_layer(layer, axes, out_axes)
        several = len(result.names) > 1
        for name, probs, labels, reduction in zip(result.names, result.probabilities,
                                                  result.labels, result.reductions,
                                                  strict=True):
            prefix = f"{layer.name} {name}" if several else layer.name
            for k in range(probs.shape[1]):
                put_layer(self.viewer, "image", from_tczyx(probs[:, k:k + 1], out_axes),
                          f"{prefix} prob {k}", colormap="magma", contrast_limits=(0.0, 1.0),
                          blending="additive", visible=k == 0, **place)
            if reduction == "linear":
                continue  # the values are the probability layers already
            put_layer(self.viewer, "labels", from_tczyx(labels, out_axes),
                      f"{prefix} predicted labels", **place)
        self.status.value = f"predicted {layer.name}"
