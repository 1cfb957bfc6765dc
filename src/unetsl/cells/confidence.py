"""Per-cell confidence: how clearly the probability map the cells were segmented from draws
each cell, so that a user can review and correct the least certain cells first (issue 30).

Membrane mode scores how well a cell is enclosed: a cell is clear when a membrane runs all
along its border and none crosses its inside. A merge (two cells joined across a faint
membrane) leaves that membrane inside the cell; a false split, or a border drawn across a gap,
leaves border pixels without membrane. Foreground mode scores how far the object's
probability is from the undecided 0.5, and with a boundary map how well it is enclosed.

Everything is computed in each cell's bounding box plus one voxel, so a frame in memory and
a label file read back block by block (:mod:`unetsl.cells.regions`) give the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

from unetsl.cells.regions import CellRegion
from unetsl.cells.segment import BORDER_RIM
from unetsl.cells.settings import check_mode
from unetsl.errors import UnetslError

#: the interior is the cell's voxels farther than this (in-plane pixels) from its border, so
#: that the border membrane's own width and blur stay out of it (about a membrane's width)
INTERIOR_DISTANCE = BORDER_RIM
#: the interior's level is this quantile of its probability, not the mean: the faint membrane
#: across a merged cell covers a small part of its interior, which a mean would average away
INTERIOR_QUANTILE = 0.95
#: a border voxel is supported by a membrane (boundary) where the probability is at least this
SUPPORTED = 0.5


def cell_confidence(region: CellRegion, mode: str, spacing: Sequence[float]) -> np.ndarray:
    """Confidence in [0, 1] of each cell of ``region.ids`` (higher = clearer), from the
    probability the cells were segmented from (``region.membrane``).

    membrane : support x contrast, where support is the fraction of the cell's border voxels
        (those touching another label) with p >= 0.5 and contrast the mean p on the border
        minus the 95th percentile of p in the interior (voxels over 2 in-plane pixels from the
        border), clipped to [0, 1]. A border voxel's p is the largest of its own and its face
        neighbours': a membrane one voxel thin lies in one of the two cells, beside the
        other's border. A weak or missing membrane on the border (a false split)
        lowers support; a membrane across the inside (a merge) lowers contrast. A cell with
        no border or no interior scores 0.
    foreground : margin, the mean of |2p - 1| over the object (1: p is 0 or 1 everywhere,
        0: p is 0.5), times the membrane score computed on ``region.boundary`` when the
        objects' boundary probability is given.

    spacing : (z, y, x) physical voxel size; distances are counted in in-plane pixels.
    """
    if region.membrane is None:
        raise UnetslError("confidence needs the probability map the cells were segmented "
                          "from")
    mode = check_mode(mode)
    pixel = min(spacing[1:])
    sampling = tuple(float(s) / pixel for s in spacing)
    scores = [_score(region, int(cell), box, mode, sampling)
              for cell, box in zip(region.ids, region.boxes())]
    return np.asarray(scores, dtype=np.float64)


def _score(region: CellRegion, cell: int, box: tuple[slice, ...], mode: str,
           sampling: tuple[float, ...]) -> float:
    """One cell's confidence, from its bounding box plus one voxel."""
    crop = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n))
                 for s, n in zip(box, region.labels.shape))
    context = region.labels[crop]
    mask = context == cell
    border = mask & find_boundaries(context, mode="inner")
    probability = np.asarray(region.membrane[crop], dtype=np.float64)  # type: ignore[index]
    if mode == "membrane":
        return enclosure(probability, mask, border, sampling)
    score = float(np.abs(2.0 * probability[mask] - 1.0).mean())
    if region.boundary is not None:
        boundary = np.asarray(region.boundary[crop], dtype=np.float64)
        score *= enclosure(boundary, mask, border, sampling)
    return score


def enclosure(probability: np.ndarray, mask: np.ndarray, border: np.ndarray,
              sampling: Sequence[float]) -> float:
    """How clearly ``probability`` (membrane or boundary) encloses the cell ``mask`` whose
    border voxels are ``border``: support x contrast, in [0, 1] (see :func:`cell_confidence`)."""
    if not border.any():
        return 0.0  # nothing encloses it: the whole image, or a cell touching no other label
    distance = ndi.distance_transform_edt(~border, sampling=sampling)
    interior = mask & (distance > INTERIOR_DISTANCE)
    if not interior.any():
        interior = mask & ~border
    if not interior.any():
        return 0.0  # all border: a sliver
    beside = ndi.generate_binary_structure(probability.ndim, 1)
    on_border = ndi.maximum_filter(probability, footprint=beside)[border]
    contrast = on_border.mean() - np.quantile(probability[interior], INTERIOR_QUANTILE)
    support = np.mean(on_border >= SUPPORTED)
    return float(support * np.clip(contrast, 0.0, 1.0))


def view_agreement(labels: np.ndarray, spread: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """How much the flipped and turned views of test-time augmentation agree over each cell
    of ``ids``: one minus twice the mean standard deviation of the views' probability over
    the cell's voxels (``predict_outputs(..., augment=True, view_spread=True)``), in [0, 1].

    A probability's standard deviation is at most 0.5 (views split between 0 and 1), so 1
    means every view drew the cell alike and 0 that they split evenly; a network that only
    learned one orientation of a pattern, or an object near its decision threshold, scores low.
    """
    if not len(ids):
        return np.zeros(0)
    mean = ndi.mean(np.asarray(spread, dtype=np.float64), labels, np.asarray(ids))
    return np.clip(1.0 - 2.0 * np.asarray(mean, dtype=np.float64), 0.0, 1.0)
