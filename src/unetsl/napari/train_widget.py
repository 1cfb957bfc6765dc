"""Train: a config file -> training in a worker process, live loss curves, a stop button.

Training is :func:`unetsl.training.train.train` as train_model runs it (logs, -best and
-latest checkpoints beside the config), in the plugin's worker process for training
(:mod:`unetsl.napari.process`: TensorFlow never loads into napari); the stop button is a
:class:`~unetsl.training.checkpoints.StopRequest` there, which saves -latest after the
current batch as Ctrl-C does for train_model. The config's data sources are listed, and an image
layer with its labels layer becomes a paired source with
:func:`unetsl.data.attach.add_array_pair` (the files are written beside the config).
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
    TextEdit,
)
from superqt.utils import ensure_main_thread

from unetsl.config.fields import LABELLER_NAMES
from unetsl.config.model_config import Config
from unetsl.data.attach import add_array_pair, source_lines
from unetsl.errors import UnetslError
from unetsl.napari.layers import (
    follow_layers,
    layer_axes,
    layer_names,
    layer_spacing,
    layer_tczyx,
    layer_unit,
)
from unetsl.napari.loss_plot import LossCurves
from unetsl.napari.process import worker
from unetsl.napari.tasks import (
    Cancelled,
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
    "config_file": "NAME.json (New model or create_model writes it)",
    "sources": "the config's training data",
    "image": "an image layer to train on",
    "labels": "its labels layer (same size), e.g. painted or corrected annotations",
    "labeller": "how the labels layer is read into the model's outputs",
    "add_button": "write both layers as TIFFs beside the config and add them as a source",
    "resume": "continue from NAME-latest.h5 instead of training anew",
    "train_button": "train as train_model does: logs, -best and -latest beside the config",
    "stop_button": "stop after the current batch; NAME-latest.h5 is saved",
}


class TrainWidget(ScrollingDock):
    """Train the model of a config (NAME.json); add training pairs from open layers."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.synchronous = False  # tests: run in the calling thread
        self.worker: Any = None
        self.result: Any = None
        self.warnings: list[str] = []
        self.progress: TaskProgress | None = None
        self.epochs = 0
        self.config_file = FileEdit(label="config", mode="r", filter="*.json")
        self.sources = TextEdit(label="data sources", value="")
        self.sources.native.setReadOnly(True)
        self.image = ComboBox(label="image layer", choices=layer_names(self.viewer, "image"),
                              nullable=True)
        self.labels = ComboBox(label="labels layer", choices=layer_names(self.viewer, "labels"),
                               nullable=True)
        self.axes = LineEdit(label="axes", tooltip="axis letters of both layers: t, c, z, y, x")
        self.labeller = ComboBox(label="labeller", choices=list(LABELLER_NAMES),
                                 value="multiclass labels")
        self.add_button = PushButton(text="Add layers as a data source")
        self.resume = CheckBox(text="resume from -latest", value=False)
        self.train_button = PushButton(text="Train")
        self.stop_button = PushButton(text="Stop (save -latest)", enabled=False)
        self.status = status_label()
        self.form.extend([self.config_file, self.sources, self.image, self.labels, self.axes,
                     self.labeller, self.add_button, self.resume, self.train_button,
                     self.stop_button, self.status])
        add_tooltips(self, TOOLTIPS)
        self.curves = LossCurves()
        self.form.native.layout().addWidget(self.curves)
        self.config_file.changed.connect(self.show_sources)
        self.add_button.clicked.connect(self.add_layers)
        self.train_button.clicked.connect(self.run)
        self.stop_button.clicked.connect(self.stop)
        follow_layers(self.viewer, [self.image, self.labels], self.axes)

    # --- the config and its data sources ---------------------------------------------
    def config(self) -> Any:
        """The chosen config, freshly loaded (either layout)."""

        path = Path(str(self.config_file.value))
        if not path.is_file():
            raise UnetslError(f"{path}: config file does not exist; create it with "
                              f"create_model -c {path}")
        return Config.load(path)

    def show_sources(self, _value: Any = None) -> None:
        """List the config's data sources as attach_data_sources --list does."""

        try:
            entries = list(self.config()["data sources"])
        except UnetslError as err:
            self.sources.value = ""
            self.status.value = notify(err)
            return
        self.sources.value = "\n".join(source_lines(entries)) or "no data sources"

    def add_layers(self) -> None:
        """Write the image and labels layers beside the config and add them as a paired
        source (checked as attach_data_sources checks a typed one)."""

        try:
            cfg = self.config()
            names = (self.image.value, self.labels.value)
            if not all(name in self.viewer.layers for name in names):
                raise UnetslError("choose an image layer and its labels layer")
            image, labels = (self.viewer.layers[name] for name in names)
            axes = self.axes.value.strip().lower()
            label_axes = axes if labels.ndim == image.ndim else layer_axes(labels)
            entries = list(cfg["data sources"])
            entry, n_pairs = add_array_pair(
                entries, cfg.folder, image.name, layer_tczyx(image, axes),
                layer_tczyx(labels, label_axes), str(self.labeller.value),
                spacing=layer_spacing(image, axes), unit=layer_unit(image))
            cfg["data sources"] = entries
            cfg.save()
        except UnetslError as err:
            self.status.value = notify(err)
            return
        self.show_sources()
        self.status.value = (f"source {entries.index(entry)}: {n_pairs} image pair(s) from "
                             f"{image.name} and {labels.name}")

    # --- training --------------------------------------------------------------------
    def run(self) -> None:
        """Train in the worker process for training, waited for in a thread (or here when
        ``synchronous``); epoch lines, losses and warnings come back as events."""
        try:
            cfg = self.config()
        except UnetslError as err:
            self.status.value = notify(err)
            return
        resume = bool(self.resume.value)
        self.epochs = int(cfg["epochs"])
        self.progress = TaskProgress(f"train {cfg.name}")
        self.curves.clear_curves()
        self.warnings = []
        earlier = [p.name for p in (cfg.sibling("-best.h5"), cfg.sibling("-latest.h5"))
                   if p.exists()]
        if earlier and not resume:  # train_model says it in an info line; here it is louder
            show_warning_line(f"training anew: {' and '.join(earlier)} will be replaced; "
                              'tick "resume from -latest" to continue that training instead')

        def task() -> dict[str, Any]:
            return worker("training").call("train", on_event=self._event,
                                           config=str(cfg.path), resume=resume)

        self.train_button.enabled, self.stop_button.enabled = False, True
        self.status.value = f"training {cfg.name} ..."
        self.worker = run_task(task, self._done, on_error=self._failed,
                               synchronous=self.synchronous)

    def _event(self, kind: str, *payload: Any) -> None:
        """Losses to the curves; epoch lines and warnings to the status line."""
        if kind == "batch":
            self.curves.add_batch(*payload)
        elif kind == "epoch":
            self.curves.add_epoch(*payload)
            self._epoch_done(int(payload[0]) + 1)
        elif kind == "line":
            self._say(payload[0], warning=False)
        elif kind == "log" and payload[0] in ("warning", "error"):
            self._say(payload[1], warning=True)

    def _epoch_done(self, epoch: int) -> None:
        """Epochs in napari's activity panel; its cancel button is Stop."""
        if self.progress is None:
            return
        try:
            self.progress(epoch, self.epochs)
        except Cancelled:
            self.stop()

    @ensure_main_thread
    def _say(self, text: str, *, warning: bool) -> None:
        if warning:
            self.warnings.append(text)
            show_warning_line(text)
        self.status.value = text

    def stop(self) -> None:
        """Stop after the current batch; -latest is saved (train_model --resume goes on)."""
        if self.train_button.enabled:
            return  # nothing is training
        worker("training").stop()
        self.status.value = "stopping after this batch ..."

    def _failed(self, error: BaseException) -> None:
        self._finish()
        self.status.value = notify(error)

    def _finish(self) -> None:
        self.train_button.enabled, self.stop_button.enabled = True, False
        if self.progress is not None:
            self.progress.close()
            self.progress = None

    def _done(self, result: dict[str, Any]) -> None:
        self._finish()
        self.result = result
        best = (f"; best {result['monitor']} {result['best']:.4g} (epoch "
                f"{result['best_epoch'] + 1})" if result["best"] is not None
                and result["best_epoch"] is not None else "")
        if result["interrupted"] is not None:
            text = (f"stopped at epoch {result['epochs_done']}/{result['epochs']}: saved "
                    f"{Path(result['latest']).name}{best}")
        else:
            text = f"trained {result['epochs_done']}/{result['epochs']} epochs{best}"
        if self.warnings:
            text += f" ({len(self.warnings)} warning(s): {self.warnings[-1]})"
        self.status.value = text
