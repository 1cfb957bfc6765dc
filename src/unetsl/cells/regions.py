"""Parts of frames that each hold whole cells: what measuring and exporting cells read.

A frame in memory is one region holding all its cells. A frame segmented block by block is
read back from the label file one region per block: the block's cells (those whose first
corner lies in its core) with their whole extent plus one voxel, so that every cell is
measured, outlined and meshed once and whole, with at most one block and its border cells in
memory (:func:`unetsl.cells.block_files.file_regions`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi


@dataclass(frozen=True)
class CellRegion:
    """Frame ``t``'s labels (z, y, x) from voxel ``origin`` on, and the ``ids`` of the cells
    it holds whole (with one voxel around each, so neighbours and borders are right); other
    labels in it only give context. ``membrane``: the probability the cells were segmented
    from there, if any (membrane, or foreground in foreground mode); ``boundary``: the
    objects' boundary probability of foreground mode, if any."""

    t: int
    origin: tuple[int, int, int]
    labels: np.ndarray
    ids: np.ndarray
    membrane: np.ndarray | None = None
    boundary: np.ndarray | None = None

    def owned(self) -> np.ndarray:
        """The labels of the region's own cells only (others 0)."""
        every = np.unique(self.labels[self.labels > 0])
        if len(every) == len(self.ids):
            return self.labels
        return np.where(np.isin(self.labels, self.ids), self.labels, 0)

    def boxes(self) -> list[tuple[slice, ...]]:
        """Each own cell's bounding box in the region, in the order of ``ids``."""
        if not len(self.ids):
            return []
        found = ndi.find_objects(self.labels, max_label=int(self.ids.max()))
        return [found[int(cell) - 1] for cell in self.ids]


def frame_regions(labels: np.ndarray, membrane: np.ndarray | None = None,
                  boundary: np.ndarray | None = None) -> Iterator[CellRegion]:
    """One region per non-empty frame of (t, z, y, x) labels in memory (with the frame's
    probability and boundary maps, when given)."""
    for t in range(labels.shape[0]):
        frame = labels[t]
        ids = np.unique(frame[frame > 0])
        if len(ids):
            yield CellRegion(t, (0, 0, 0), frame, ids,
                             None if membrane is None else membrane[t],
                             None if boundary is None else boundary[t])
