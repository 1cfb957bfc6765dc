"""segment_array: the in-memory core of segment_file (what the napari plugin calls)."""

from __future__ import annotations

import numpy as np
import pytest

from unetsl.cells.files import segment_array, segment_file
from unetsl.errors import UnetslError
from unetsl.io.tiff import write_image


def test_segment_array_gives_segment_files_cells(drawings, tmp_path):
    frame = drawings.membrane_probability(drawings.voronoi((48, 48), 12.0))
    prob = np.stack([frame, frame])  # two frames, (t, y, x)
    write_image(tmp_path / "prob.tif", prob[:, None, None], spacing=(1.0, 0.5, 0.5))
    from_file = segment_file(tmp_path / "prob.tif", tmp_path / "cells.tif")
    in_memory = segment_array(prob[:, None], (1.0, 0.5, 0.5))
    np.testing.assert_array_equal(in_memory.labels, from_file.labels)
    assert in_memory.table.keys() == from_file.table.keys()
    np.testing.assert_array_equal(in_memory.table["area"], from_file.table["area"])
    assert len(in_memory.tracks) == len(from_file.tracks) and in_memory.written == []


def test_segment_array_refuses_labels_and_bad_modes():
    with pytest.raises(UnetslError, match="holds uint8 pixels, not probabilities"):
        segment_array(np.ones((1, 1, 8, 8), np.uint8))
    with pytest.raises(UnetslError,
                       match="\"cell mode\" must be one of membrane, foreground, got 'nuclei'"):
        segment_array(np.ones((1, 1, 8, 8), np.float32), mode="nuclei")


def test_a_two_channel_foreground_map_is_split_by_its_boundary(tmp_path, caplog):
    """What predict_image --probabilities writes for an "instance labels" model: channel 0
    foreground, 1 boundary; used unless "cell boundary channel" is -1 (issue 27)."""
    from tests.cells.test_segment import touching_nuclei

    from unetsl.cells import CellSettings

    truth, foreground, boundary = touching_nuclei()
    path = tmp_path / "prob.tif"
    write_image(path, np.stack([foreground, boundary], axis=1).astype(np.float32))
    with caplog.at_level("INFO", logger="unetsl"):
        split = segment_file(path, tmp_path / "a.tif", mode="foreground")
    assert any("channel 1 read as the objects' boundary" in r.message for r in caplog.records)
    assert len(np.unique(split.labels[split.labels > 0])) == 3
    off = CellSettings.from_overrides({"cell boundary channel": -1})
    joined = segment_file(path, tmp_path / "b.tif", mode="foreground", settings=off)
    assert len(np.unique(joined.labels[joined.labels > 0])) == 2
    same = CellSettings.from_overrides({"cell boundary channel": 0})
    with pytest.raises(UnetslError, match='"cell boundary channel" 0 must be another of its 2'):
        segment_file(path, tmp_path / "c.tif", mode="foreground", settings=same)
    with pytest.raises(UnetslError, match='"cell boundary channel" is for "cell mode" fore'):
        segment_file(path, tmp_path / "d.tif", settings=CellSettings.from_overrides(
            {"cell boundary channel": 1}))
