"""Cell instances from probability maps: segment, track, measure and export them
(their scores against true cells: :mod:`unetsl.evaluate.instances`).

Pure numpy-in/numpy-out functions for notebooks and scripts; arrays are (t, z, y, x) and
spacing is (z, y, x) in physical units.
"""

from unetsl.cells.export import write_labels, write_labels_tiff, write_meshes, write_roi_zip
from unetsl.cells.measure import measure, write_csv
from unetsl.cells.segment import segment
from unetsl.cells.settings import CELL_KEYS, CellSettings
from unetsl.cells.tracking import (
    Track,
    read_ctc_tracks,
    split_gaps,
    track,
    whole_tracks,
    write_ctc_tracks,
)

__all__ = [
    "CELL_KEYS",
    "CellSettings",
    "Track",
    "measure",
    "read_ctc_tracks",
    "segment",
    "split_gaps",
    "track",
    "whole_tracks",
    "write_csv",
    "write_ctc_tracks",
    "write_labels",
    "write_labels_tiff",
    "write_meshes",
    "write_roi_zip",
]
