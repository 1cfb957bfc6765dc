"""New model: a config with the common keys and its untrained model, without a terminal.

The fields are the keys a biologist sets first (patch, labels, how labels are read, epochs,
learning rate, precision, network size); everything else keeps create_model's defaults for
new configs. The files are written by create_model's own path
(:func:`unetsl.nets.model_files.create_model_files`: check, build, back up an existing
NAME.json, write NAME.json and NAME.h5), in the worker process, since building the model
needs TensorFlow.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import ComboBox, FileEdit, FloatSpinBox, LineEdit, PushButton, SpinBox

from unetsl.config.fields import LABELLER_NAMES, LABELLER_OUTPUTS, PRECISIONS
from unetsl.config.model_config import Config
from unetsl.errors import UnetslError
from unetsl.napari.process import worker
from unetsl.napari.tasks import ScrollingDock, add_tooltips, notify, run_task, status_label

if TYPE_CHECKING:
    import napari

def parse_patch(text: str) -> list[int]:
    """ "1, 3, 64, 64" -> [1, 3, 64, 64] (c, z, y, x); else a one-line error."""
    parts = text.replace(",", " ").split()
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4 or min(values, default=0) < 1:
        raise UnetslError(f'"input shape" must be four positive integers c, z, y, x (e.g. '
                          f'1, 3, 64, 64 for a 2D movie, 1, 16, 64, 64 for 3D); got {text!r}')
    return values


def config_values(patch: str, n_labels: int, labeller: str, epochs: int,
                  learning_rate: float, precision: str, filters: int,
                  depth: int) -> dict[str, Any]:
    """The config keys of the widget's fields; pooling halves z only where the patch is
    deep enough (z >= 8), as the example configs do for 2D movies and 3D stacks."""
    shape = parse_patch(patch)
    activation, loss = LABELLER_OUTPUTS[labeller]
    return {"input shape": shape, "n labels": int(n_labels), "activation": activation,
            "loss function": loss, "epochs": int(epochs),
            "initial learning rate": float(learning_rate), "precision": precision,
            "n filters": int(filters), "depth": int(depth),
            "pooling": [2 if shape[1] >= 8 else 1, 2, 2]}


#: hover help of the fields that do not carry their own
TOOLTIPS = {
    "epochs": "passes over the training data; -best keeps the best one",
    "learning_rate": "Adam's initial learning rate",
    "create_button": "write NAME.json and build the untrained NAME.h5",
}


class NewModelWidget(ScrollingDock):
    """Write NAME.json with the fields' keys and build its untrained NAME.h5."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.synchronous = False  # tests: run in the calling thread
        self.worker: Any = None
        self.config_file = FileEdit(label="config", mode="w", filter="*.json",
                                    tooltip="NAME.json to write; the model is NAME.h5 beside "
                                            "it (an existing NAME.json is backed up)")
        self.patch = LineEdit(label="patch c, z, y, x", value="1, 3, 64, 64",
                              tooltip="channels, depth (time points of a 2D movie, or z "
                                      "slices), height, width of a training patch")
        self.n_labels = SpinBox(label="labels", min=1, max=16, value=2,
                                tooltip="output channels, e.g. 2 = membrane and vertex")
        self.labeller = ComboBox(label="labels are", choices=list(LABELLER_NAMES),
                                 value="multiclass labels",
                                 tooltip="how label images are read; decides the output "
                                         "activation and the loss")
        self.epochs = SpinBox(label="epochs", min=1, max=100000, value=100)
        self.learning_rate = FloatSpinBox(label="learning rate", min=1e-6, max=1.0,
                                          step=1e-4, value=1e-3)
        self.learning_rate.native.setDecimals(6)
        self.precision = ComboBox(label="precision", choices=list(PRECISIONS), value="auto",
                                  tooltip='"auto": bfloat16 where this machine trains it like '
                                          "float32 (checked at start), else float32")
        self.filters = SpinBox(label="filters", min=1, max=512, value=16,
                               tooltip="filters of the first level (doubling per level)")
        self.depth = SpinBox(label="depth", min=1, max=8, value=3,
                             tooltip="levels of the U-Net")
        self.create_button = PushButton(text="Create model")
        self.status = status_label()
        self.form.extend([self.config_file, self.patch, self.n_labels, self.labeller,
                          self.epochs, self.learning_rate, self.precision, self.filters,
                          self.depth, self.create_button, self.status])
        add_tooltips(self, TOOLTIPS)
        self.create_button.clicked.connect(self.run)

    def values(self) -> dict[str, Any]:
        return config_values(self.patch.value, self.n_labels.value, str(self.labeller.value),
                             self.epochs.value, self.learning_rate.value,
                             str(self.precision.value), self.filters.value, self.depth.value)

    def run(self) -> None:
        """Check here, then build and write in the worker process."""

        try:
            path = Path(str(self.config_file.value)).expanduser()
            if path.suffix.lower() != ".json":
                raise UnetslError(f"config {str(path)!r}: give a file name ending in .json")
            if not path.parent.is_dir():
                raise UnetslError(f"{path}: folder {path.parent} does not exist")
            values = self.values()
            config = Config.load(path, must_exist=False)
            config.update(values)
            config.validate()
        except UnetslError as err:
            self.status.value = notify(err)
            return

        def task() -> str:
            return worker("prediction").call("create", config=str(path.resolve()),
                                             values=values)

        self.create_button.enabled = False
        self.status.value = f"building {path.stem}.h5 ..."
        self.worker = run_task(task, self._done, on_error=self._failed,
                               synchronous=self.synchronous)

    def _failed(self, error: BaseException) -> None:
        self.create_button.enabled = True
        self.status.value = notify(error)

    def _done(self, summary: str) -> None:
        self.create_button.enabled = True
        self.status.value = summary
