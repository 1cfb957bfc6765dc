"""A biologist's session in a real napari window (run under Xvfb by test_real_viewer.py):
open the sample, dock every widget, create a model, train 1 epoch, predict, segment cells,
save the table and the ROI set, take screenshots. Prints one "key: value" line per finding.

    xvfb-run -a -s "-screen 0 1600x1000x24" python real_viewer_script.py OUT_FOLDER
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication
from scipy import ndimage as ndi

from unetsl.config.model_config import Config
from unetsl.napari.cells_widget import CellsWidget
from unetsl.napari.inspect_widget import InspectWidget
from unetsl.napari.new_model_widget import NewModelWidget
from unetsl.napari.predict_widget import PredictWidget
from unetsl.napari.review_widget import ReviewWidget
from unetsl.napari.train_widget import TrainWidget

WIDGETS = ("New model", "Predict", "Segment cells", "Train", "Inspect training data",
           "Review cells")


def say(key: str, value: object) -> None:
    print(f"{key}: {value}", flush=True)


def settle() -> None:
    for _ in range(5):
        QApplication.processEvents()


def main(out: Path) -> None:
    viewer = napari.Viewer(title="unetsl real viewer test")
    viewer.window._qt_window.resize(1366, 768)
    viewer.open_sample("unetsl", "epithelium-movie")
    docked = {name: viewer.window.add_plugin_dock_widget("unetsl", name)[1] for name in WIDGETS}
    settle()
    truth = viewer.layers["epithelium movie labels"].data.copy()

    new: NewModelWidget = docked["New model"]
    new.synchronous = True
    new.config_file.value = out / "movie.json"
    # New model does not seed the weights, so runs differ; 1 epoch from some starts left a
    # flat map
    epochs = int(os.environ.get("REAL_VIEWER_EPOCHS", "3"))
    new.patch.value, new.epochs.value, new.filters.value, new.depth.value = (
        "1, 3, 32, 32", epochs, 4, 2)
    new.run()
    say("new model", new.status.value.splitlines()[0])
    cfg = Config.load(out / "movie.json")
    cfg.update({"stride": [0, 1, 32, 32], "batch size": 4, "seed": 1,
                "validation fraction": 0.0})  # a quick test run: what -D would set
    cfg.save()
    train: TrainWidget = docked["Train"]
    train.synchronous = True
    train.config_file.value = cfg.path
    train.image.value, train.labels.value = "epithelium movie", "epithelium movie labels"
    train.add_layers()
    train.run()
    say("train", train.status.value)
    train.curves.figure.savefig(out / "curves.png")

    predict: PredictWidget = docked["Predict"]
    predict.synchronous = True
    predict.model_file.value = out / "movie-latest.h5"
    predict.image.value = "epithelium movie"
    predict.run()
    say("predict", predict.status.value)
    kept = viewer.layers["epithelium movie labels"].data
    say("annotation kept", bool(np.array_equal(kept, truth)))

    cells: CellsWidget = docked["Segment cells"]
    cells.synchronous = True
    cells.probabilities.value = "epithelium movie prob 0"
    cells.run()
    say("cells", cells.status.value)
    say("csv", cells.save("table", out / "cells"))
    say("rois", cells.save("rois", out / "cells-rois"))
    review: ReviewWidget = docked["Review cells"]  # correct and retrain
    review.synchronous = True
    # the true cells as the layer to review: a 1-epoch model's own cells may be none at all
    viewer.add_labels(np.stack([ndi.label(frame == 0)[0] for frame in truth]),
                      name="cells to review", axis_labels=("t", "y", "x"))
    settle()
    review.image.value, review.cells.value = "epithelium movie", "cells to review"
    review.probabilities.value, review.model_file.value = ("epithelium movie prob 0",
                                                           out / "movie-latest.h5")
    review.steps.value = 2
    review.rank()
    review.step(1)
    review.done()
    say("review", review.counter.value)
    review.retrain()
    say("retrain", review.status.value)
    viewer.reset_view()  # Next zoomed in on one cell
    axis_labels = tuple(viewer.dims.axis_labels)
    inspect: InspectWidget = docked["Inspect training data"]
    inspect.synchronous = True
    inspect.config_file.value = cfg.path
    inspect.run()
    say("inspect", inspect.status.value)
    say("patch window layers", len(inspect.patch_viewer().layers))
    say("sliders kept", tuple(viewer.dims.axis_labels) == axis_labels)
    say("layers", sorted(layer.name for layer in viewer.layers))
    settle()
    viewer.screenshot(str(out / "canvas.png"), canvas_only=True)
    viewer.screenshot(str(out / "window.png"), canvas_only=False)
    say("loaded", sorted(m for m in ("tensorflow", "keras") if m in sys.modules))
    inspect.patch_viewer().close()
    viewer.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
