"""Review cells widget: cells ranked by confidence, Next/Previous/Done, and one real Retrain
(a tiny model fine-tuned for 2 steps in the worker process) that keeps the corrected cell."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from unetsl.cells.files import segment_array
from unetsl.cells.measure import measure
from unetsl.data.corrections import correction_labels
from unetsl.data.synthetic import epithelium_time_series
from unetsl.io.tiff import read_image

PIXEL = 0.2


def _membrane_map(labels: np.ndarray) -> np.ndarray:
    """A network-like membrane probability from true membrane labels (bit 0): blurred."""
    blurred = ndi.gaussian_filter((labels & 1).astype(np.float32), (0, 1.0, 1.0))
    return np.clip(blurred / blurred.max(), 0, 1).astype(np.float32)


def _viewer_with_cells(viewer, image: np.ndarray, membrane: np.ndarray):
    """Image, probabilities, their cells (as Segment cells makes them) and a user's own
    annotation layer, on a 0.2 µm (t, y, x) scale; the Review widget on them."""
    from unetsl.napari.review_widget import ReviewWidget

    maps = _membrane_map(membrane)
    cells = segment_array(maps[:, None], (1.0, PIXEL, PIXEL), tracking=False).labels[:, 0]
    scale = (1.0, PIXEL, PIXEL)
    viewer.add_image(image, name="movie", scale=scale, axis_labels=("t", "y", "x"))
    viewer.add_image(maps, name="movie prob 0", scale=scale, axis_labels=("t", "y", "x"))
    viewer.add_labels(cells, name="movie cells", scale=scale, axis_labels=("t", "y", "x"))
    viewer.add_labels(np.ones_like(cells), name="annotation", scale=scale,
                      axis_labels=("t", "y", "x"))
    widget = ReviewWidget(viewer)
    widget.synchronous = True
    widget.image.value, widget.cells.value = "movie", "movie cells"
    widget.probabilities.value = "movie prob 0"
    return widget, maps, cells


def test_cells_are_ranked_least_confident_first_and_next_shows_them(viewer):
    sample = epithelium_time_series((2, 64, 64), seed=3)
    widget, maps, cells = _viewer_with_cells(viewer, sample.image, sample.labels)
    assert widget.axes.value == "tyx"
    widget.step(1)
    assert widget.status.value == "press Rank first"
    widget.rank()
    table = measure(cells[:, None], (1.0, PIXEL, PIXEL), membrane=maps[:, None],
                    confidence=True)
    scores = [score for _, _, score in widget.ranking]
    assert scores == sorted(table["confidence"].tolist())
    assert len(scores) == len(table["id"]) == widget.table.rowCount() > 20
    assert scores[0] < 0.5 * scores[-1]  # not all alike (0.10 .. 0.69, 50 cells)
    assert widget.status.value.startswith(f"{len(scores)} cells ranked; lowest confidence")

    layer = viewer.layers["movie cells"]
    widget.step(1)
    cell, t, score = widget.ranking[0]
    where = np.argwhere(cells[t] == cell)
    assert tuple(viewer.camera.center[-2:]) == pytest.approx(tuple(where.mean(0) * PIXEL))
    assert viewer.dims.point[0] == pytest.approx(t) and viewer.camera.zoom > 1.0
    assert layer.selected_label == cell and not layer.show_selected_label
    assert viewer.layers.selection.active is layer  # napari's paint tools edit it
    assert widget.status.value.startswith(f"cell {cell} at t {t}: confidence {score:.3f}, "
                                          f"1 of {len(scores)}")

    widget.done()  # marked, and on to the next cell
    assert widget.counter.value == "corrected: 1 cells" and widget.position == 1
    assert widget.corrected == {cell}
    piece = tuple(np.argwhere(layer.data == widget.ranking[1][0])[0])
    layer.data[piece] = 999  # the user painted a split-off piece with a new label
    layer.selected_label = 999
    widget.done()
    assert widget.corrected == {cell, widget.ranking[1][0], 999}
    assert widget.counter.value == "corrected: 3 cells"
    gone, t_gone = widget.ranking[2][:2]  # the user deletes a false cell and says Done
    was = layer.data == gone
    layer.data[was] = 0
    widget.done()
    assert widget.counter.value == "corrected: 3 cells, 1 deleted" and gone not in widget.corrected
    np.testing.assert_array_equal(widget.erased[t_gone, 0], was[t_gone])  # (t, z, y, x)
    widget.model_file.value = __file__  # any file: the job is only assembled here
    assert widget._retrain_job()[0]["erased"] is widget.erased
    widget.step(-2)
    assert widget.position == 1 and widget.status.value.endswith("(corrected)")
    widget.table.select_row(5)  # a click on a row goes to that cell
    assert widget.position == 5

    first, second = widget.ranking[0][0], widget.ranking[2][0]  # the user merges two cells
    layer.data[layer.data == second] = first
    widget.rank()  # the layer as it is now is ranked, not a new segmentation
    assert first in [c for c, _, _ in widget.ranking]
    assert second not in [c for c, _, _ in widget.ranking]


def test_retrain_fine_tunes_updates_the_labels_and_keeps_the_corrected_cell(viewer,
                                                                            tmp_path):
    from tests.training.test_train import make_project

    make_project(tmp_path, n_images=1, **{"validation fraction": 0.0})
    image = read_image(tmp_path / "images" / "epi-000.tif").data[:, 0, 0]
    membrane = read_image(tmp_path / "labels" / "epi-000.tif").data[:, 0, 0]
    widget, _, cells = _viewer_with_cells(viewer, image, membrane)
    widget.model_file.value = tmp_path / "m.h5"
    widget.steps.value = 2
    widget.rank()
    widget.step(1)
    layer = viewer.layers["movie cells"]
    cell, t, _ = widget.ranking[0]
    neighbour = widget.ranking[1][0]
    layer.data[layer.data == neighbour] = cell  # the user's correction: a merge
    widget.done()
    before = np.array(layer.data)
    mask = before == cell
    annotation = np.array(viewer.layers["annotation"].data)

    widget.retrain()
    assert widget.status.value.startswith("retrained: m-tuned-latest.h5; "), widget.status.value
    assert Path(str(widget.model_file.value)) == tmp_path / "m-tuned-latest.h5"
    after = layer.data
    assert after.shape == before.shape and not np.array_equal(after, before)
    kept = int(after[mask][0])
    np.testing.assert_array_equal(after == kept, mask)  # exactly as the user drew it
    assert widget.corrected == {kept} and widget.counter.value == "corrected: 1 cells"
    np.testing.assert_array_equal(viewer.layers["annotation"].data, annotation)
    tuned = viewer.layers["movie tuned prob 0"]
    assert tuned.data.shape == image.shape and widget.probabilities.value == tuned.name
    assert tuple(tuned.scale) == (1.0, PIXEL, PIXEL)
    assert widget.ranking and kept in [c for c, _, _ in widget.ranking]  # ranked again
    labels = read_image(tmp_path / "corrections" / "labels" / "movie.tif").data[:, 0]
    np.testing.assert_array_equal(labels, correction_labels(before[:, None], [cell],
                                                            "multiclass labels"))
    assert read_image(tmp_path / "corrections" / "images" / "movie.tif").data.shape == (
        3, 1, 1, 32, 32)

    widget.retrain()  # a second round goes on from the tuned model (its config is m.json)
    assert widget.status.value.startswith("retrained: m-tuned-latest.h5; "), widget.status.value
    np.testing.assert_array_equal(layer.data == next(iter(widget.corrected)), mask)


def test_the_retrain_task_stops_early_and_needs_the_models_config(tmp_path):
    """The worker task run here: Stop (pressed before it started) ends the fine-tuning at
    its first batch, the image is still predicted with the tuned model; a model without
    its NAME.json is one line."""
    import shutil

    from tests.training.test_train import make_project

    from unetsl.errors import UnetslError
    from unetsl.napari.process import TaskContext
    from unetsl.napari.worker_tasks import retrain

    make_project(tmp_path, n_images=1, **{"validation fraction": 0.0})
    image = read_image(tmp_path / "images" / "epi-000.tif").data
    cells = np.zeros((3, 1, 32, 32), np.int32)
    cells[:, :, 8:20, 8:20] = 4
    events: list[tuple] = []
    context = TaskContext(events.append)
    context.stop_pending = True
    result = retrain(context, model=str(tmp_path / "m.h5"), image=image, image_name="a/b c",
                     cells=cells, corrected=[4], settings={"fine-tuning steps": 4})
    assert result["stopped"] and result["epochs_done"] == 0
    assert result["model"] == str(tmp_path / "m-tuned-latest.h5")
    assert result["prediction"].probabilities[-1].shape == (3, 2, 1, 32, 32)
    assert (tmp_path / "corrections" / "labels" / "a_b_c.tif").is_file()
    assert any(kind == "progress" for kind, *_ in events)  # the prediction's tiles
    shutil.copy(tmp_path / "m.h5", tmp_path / "other.h5")
    with pytest.raises(UnetslError, match=r"other\.h5: no config \(NAME\.json\) beside the "
                                          r"model; fine-tuning needs the config"):
        retrain(TaskContext(events.append), model=str(tmp_path / "other.h5"), image=image,
                image_name="x", cells=cells, corrected=[4], settings={})


def test_the_widget_keeps_tensorflow_out_of_napari():
    """Ranking and segmenting run in napari's process: the widget imports no TensorFlow."""
    import subprocess
    import sys

    code = ("import sys, unetsl.napari.review_widget; "
            "print(sorted(m for m in ('tensorflow', 'keras', 'jax', 'torch') if m in "
            "sys.modules))")
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert ran.stdout.strip() == "[]"
