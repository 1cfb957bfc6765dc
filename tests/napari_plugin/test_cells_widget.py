"""Segment cells widget: segment_cells' labels and table, row clicks, the saved files."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from unetsl.data.synthetic import epithelium_stack, epithelium_time_series
from unetsl.io.tiff import read_image, write_image

PIXEL = 0.2


def _membrane_map(labels: np.ndarray) -> np.ndarray:
    """A network-like membrane probability from true membrane labels (bit 0): blurred."""
    blurred = ndi.gaussian_filter((labels & 1).astype(np.float32), (0, 1.0, 1.0))
    return np.clip(blurred / blurred.max(), 0, 1).astype(np.float32)


def _segment(viewer, data, axes, scale, **settings):
    from unetsl.napari.cells_widget import CellsWidget

    viewer.add_image(data, name="prob", scale=scale, axis_labels=tuple(axes))
    widget = CellsWidget(viewer)
    widget.synchronous = True
    widget.probabilities.value = "prob"
    for key, value in settings.items():
        getattr(widget, key).value = value
    widget.run()
    return widget


def test_cells_equal_segment_cells_and_the_table_selects_cells(viewer, tmp_path):
    from click.testing import CliRunner

    from unetsl.cli.segment_cells import main

    maps = _membrane_map(epithelium_time_series((4, 64, 64), seed=3).labels)
    write_image(tmp_path / "prob.tif", maps[:, None, None], spacing=(1.0, PIXEL, PIXEL),
                unit="micron")
    widget = _segment(viewer, maps, "tyx", (1.0, PIXEL, PIXEL), min_size=12)
    assert widget.axes.value == "tyx"
    assert "cells in 4 time point(s)" in widget.status.value and "tracks" in widget.status.value
    cells = viewer.layers["prob cells"]
    assert cells.data.shape == (4, 64, 64) and tuple(cells.scale) == (1.0, PIXEL, PIXEL)

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        ran = CliRunner().invoke(main, ["prob.tif", "cells.tif", "--min-size", "12",
                                        "--table", "cli.csv"])
    finally:
        os.chdir(cwd)
    assert ran.exit_code == 0, ran.output
    np.testing.assert_array_equal(cells.data, read_image(tmp_path / "cells.tif").data[:, 0, 0])

    assert widget.save("table", tmp_path / "widget.csv") == tmp_path / "widget.csv"
    assert (tmp_path / "widget.csv").read_text() == (tmp_path / "cli.csv").read_text()
    with open(tmp_path / "cli.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    table = widget.table
    assert table.rowCount() == len(rows) and table.columns[:2] == ["id", "t"]

    table.sortItems(table.columns.index("area"))  # numbers sort as numbers
    areas = [table.row_values(r)["area"] for r in range(table.rowCount())]
    assert areas == sorted(areas)
    last = table.row_values(table.rowCount() - 1)
    table.select_row(table.rowCount() - 1)  # the largest cell
    assert cells.selected_label == int(last["id"]) and cells.show_selected_label
    assert viewer.dims.point[0] == pytest.approx(last["t"])

    assert widget.save("rois", tmp_path / "cells.zip").stat().st_size > 0
    assert widget.save("meshes", tmp_path / "meshes") is None  # 2D: a one-line message
    assert widget.status.value.startswith("meshes: layer 'prob cells' is 2D (z = 1)")


def test_stack_cells_use_the_z_spacing_and_save_meshes(viewer, tmp_path):
    from unetsl.cells.files import segment_array
    from unetsl.cells.settings import CellSettings

    maps = _membrane_map(epithelium_stack((8, 40, 40), seed=2).labels)
    widget = _segment(viewer, maps, "zyx", (0.5, PIXEL, PIXEL))
    expected = segment_array(maps[None], (0.5, PIXEL, PIXEL), settings=CellSettings())
    np.testing.assert_array_equal(viewer.layers["prob cells"].data, expected.labels[0])
    assert "volume" in widget.table.columns
    written = widget.save("meshes", tmp_path / "meshes")
    assert written is not None and any(written.glob("cell-*.ply"))


def test_only_float_layers_are_offered_and_errors_name_the_layer(viewer):
    """Raw camera images (integers) are not probabilities: the list offers float layers, and
    picks the first one rather than "-----"."""
    from unetsl.napari.cells_widget import CellsWidget

    viewer.add_image(np.ones((20, 20), np.uint16), name="raw")
    widget = CellsWidget(viewer)
    assert widget.probabilities.choices == (None,) and widget.probabilities.value is None
    widget.run()
    assert widget.status.value == "choose a probability layer"
    viewer.add_image(np.full((20, 20), 2.0, np.float32), name="prob", axis_labels=("y", "x"))
    assert widget.probabilities.choices == (None, "prob")
    assert widget.probabilities.value == "prob"
    widget.synchronous = True
    widget.run()
    assert widget.status.value.startswith("layer 'prob': "), widget.status.value
    widget.channel.value = 2
    widget.run()
    assert widget.status.value.startswith("layer 'prob': channel 2 does not exist")
    assert [layer.name for layer in viewer.layers] == ["raw", "prob"]


def test_a_weak_map_hints_at_training_headers_have_units_rows_centre_the_cell(viewer,
                                                                            tmp_path):
    maps = 0.45 * _membrane_map(epithelium_time_series((2, 64, 64), seed=3).labels)
    widget = _segment(viewer, maps, "tyx", (1.0, PIXEL, PIXEL))
    viewer.layers["prob"].units = ("pixel", "micrometer", "micrometer")
    widget.run()
    assert widget.status.value.endswith("; the probabilities peak at 0.45: is the model "
                                        "trained enough?"), widget.status.value
    titles = [widget.table.horizontalHeaderItem(k).text()
              for k in range(widget.table.columnCount())]
    assert titles[:3] == ["id", "t (from 0)", "centroid_z (µm)"] and "area (µm²)" in titles
    assert not widget.rois_button.native.isHidden() and widget.meshes_button.native.isHidden()

    cell = int(widget.result.labels[1].max())
    widget.select_cell(cell, 1)
    where = np.argwhere(widget.result.labels[1, 0] == cell)
    assert tuple(viewer.camera.center[-2:]) == pytest.approx(tuple(where.mean(0) * PIXEL))
    assert viewer.camera.zoom > 1.0  # zoomed in on one cell

    assert widget.save("table", tmp_path / "cells") == tmp_path / "cells.csv"
    assert widget.save("rois", tmp_path / "cells-rois") == tmp_path / "cells-rois.zip"
    assert (tmp_path / "cells.csv").exists() and (tmp_path / "cells-rois.zip").exists()


def test_save_dialogs_open_where_the_predicted_image_came_from(viewer, tmp_path):
    """Not napari's working folder: the folder of the file the probabilities were predicted
    from (their layer is "<image> prob 0"; the image layer knows its file)."""
    from napari.layers._source import layer_source

    from unetsl.napari.cells_widget import CellsWidget

    movie = tmp_path / "data" / "movie.tif"
    with layer_source(path=str(movie)):  # as napari's readers record where a layer came from
        viewer.add_image(np.zeros((2, 16, 16), np.uint16), name="movie")
    viewer.add_image(np.zeros((2, 16, 16), np.float32), name="movie prob 0")
    widget = CellsWidget(viewer)
    widget.probabilities.value = "movie prob 0"
    assert widget._folder() == movie.parent
    widget.probabilities.value = None
    assert widget._folder() == Path.cwd()


def test_a_boundary_layer_splits_touching_nuclei_as_segment_cells_does(viewer):
    """Predict's "prob 1" layer of an instance-labels model, chosen as the boundary: the
    touching nuclei part; nothing is chosen as the boundary for the user."""
    from tests.cells.test_segment import touching_nuclei

    truth, foreground, boundary = touching_nuclei()
    viewer.add_image(boundary[0, 0].astype(np.float32), name="prob 1")
    widget = _segment(viewer, foreground[0, 0].astype(np.float32), "yx", (1.0, 1.0),
                      mode="foreground", min_size=4)
    assert widget.boundary.value is None
    assert len(np.unique(widget.result.labels)) == 3  # background + 2: the squares as one
    widget.boundary.value = "prob 1"
    widget.run()
    assert len(np.unique(widget.result.labels)) == 4, widget.status.value
    np.testing.assert_array_equal(widget.result.labels[0, 0] > 0, truth[0, 0] > 0)
