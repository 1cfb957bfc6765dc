"""Inspect: the patches and per-head targets that training sees, as layers.

The patches are those inspect_data_sources draws: :func:`unetsl.data.inspect.build_pages`
samples them as training does (stride, jitter, rotations, augmentation, seeded) and
:func:`unetsl.data.inspect.panels` splits each into input, label and target channels (a
cerberus head at its own resolution). Each panel becomes a layer with the patches along
its first axis; a head below full resolution is placed on the input's pixels by scale and
translation rather than upsampled. In a napari window the layers open in a second window,
away from the images being segmented.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import FileEdit, PushButton, SpinBox, TextEdit

from unetsl.config.model_config import Config
from unetsl.errors import UnetslError
from unetsl.napari.layers import put_layer
from unetsl.napari.process import worker
from unetsl.napari.tasks import ScrollingDock, add_tooltips, notify, run_task, status_label
from unetsl.napari.worker_tasks import LayerData

if TYPE_CHECKING:
    import napari


#: hover help of the fields that do not carry their own
TOOLTIPS = {
    "config_file": "NAME.json whose data sources to show",
    "source": "which data source (0 = the first, as attach_data_sources --list numbers them)",
    "patches": "how many training patches to show",
    "show_button": "draw the patches as training does and show input, label and targets",
    "summary": "what the sampling saw: patch counts, label values, heads",
}


class InspectWidget(ScrollingDock):
    """Show training patches of one data source of a config: input, label, every target."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self._patches: Any = None
        self.synchronous = False  # tests: run in the calling thread
        self.worker: Any = None
        self.config_file = FileEdit(label="config", mode="r", filter="*.json")
        self.source = SpinBox(label="data source", min=0, max=999, value=0)
        self.patches = SpinBox(label="patches", min=1, max=50, value=4)
        self.seed = SpinBox(label="seed", min=0, max=2**31 - 1, value=0,
                            tooltip="seed of the sampling and augmentation shown")
        self.show_button = PushButton(text="Show patches")
        self.status = status_label()
        self.summary = TextEdit(label="summary", value="")
        self.summary.native.setReadOnly(True)
        self.form.extend([self.config_file, self.source, self.patches, self.seed, self.show_button,
                     self.status, self.summary])
        add_tooltips(self, TOOLTIPS)
        self.show_button.clicked.connect(self.run)

    def run(self) -> None:
        """Sample the patches in the worker process (or wait here when ``synchronous``)."""

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

        def task() -> tuple[list[str], list[LayerData], int]:
            return worker("prediction").call("inspect", config=str(path.resolve()),
                                             source=index, count=count, seed=seed)

        self.show_button.enabled = False
        self.status.value = f"sampling source {index} ..."
        self.worker = run_task(task, self._show, on_error=self._failed,
                               synchronous=self.synchronous)

    def _failed(self, error: BaseException) -> None:
        self.show_button.enabled = True
        self.status.value = notify(error)

    def patch_viewer(self) -> Any:
        """Where the patches go: in a napari window, a second window of their own, so that
        the (patch, z, y, x) layers neither relabel the image's sliders (a movie's t would
        become z) nor cover it; elsewhere (a ViewerModel in scripts) the viewer itself."""
        import napari

        if not isinstance(self.viewer, napari.Viewer):
            return self.viewer
        try:
            if self._patches is not None and self._patches.window._qt_window.isVisible():
                return self._patches
        except (AttributeError, RuntimeError):  # the user closed it
            pass
        self._patches = napari.Viewer(title="unetsl: training patches")
        return self._patches

    def _show(self, made: tuple[list[str], list[LayerData], int]) -> None:
        self.show_button.enabled = True
        summary, layers, shown = made
        for data, options, kind in layers:
            options = dict(options)
            put_layer(self.patch_viewer(), kind, data, options.pop("name"), **options)
        self.summary.value = "\n".join(summary)
        self.status.value = f"{len(layers)} layers of {shown} patches"
