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
