"""Corrected cells -> training labels, and corrections kept across re-segmentations (issue 30).

A user reviews the least confident cells of a segmentation, fixes a few and retrains. Only
those cells are known to be right, so the label image to fine-tune on holds them and a
ring around them, every other voxel the "unknown label" value (partial labels,
:mod:`unetsl.data.partial`), in the form the config's labeller reads: a membrane image for
the membrane labellers, the cell ids for "instance labels". After retraining the image is
segmented anew; :func:`keep_corrections` pastes the corrected cells back so the user's work
is never lost to a model that has not learned it (yet).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

from unetsl.data.labellers import get_labeller
from unetsl.errors import UnetslError

#: "unknown label" "max" of the uint16 label images written here (data.partial)
UNKNOWN = 65535
#: labellers that read a label image as membranes (non-zero, bit 0): given cell borders
MEMBRANE_LABELLERS = ("multiclass labels", "double membrane labels", "region labels")
#: labellers that read a label image as object ids: given the cells themselves
ID_LABELLERS = ("instance labels",)
#: in-plane 4-neighbourhood, never across t or z (the labellers' per-slice convention)
_PLANE_CROSS = ndi.generate_binary_structure(2, 1)[None, None]


def _check_cells(cells: np.ndarray, who: str) -> np.ndarray:
    cells = np.asarray(cells)
    if cells.ndim != 4 or not np.issubdtype(cells.dtype, np.integer):
        raise UnetslError(f"{who}: cells must be an integer (t, z, y, x) label array, got "
                          f"shape {cells.shape} dtype {cells.dtype}")
    return cells


def _ids(corrected: Iterable[int]) -> np.ndarray:
    return np.asarray(sorted({int(c) for c in corrected if int(c) != 0}), dtype=np.int64)


def cell_borders(cells: np.ndarray) -> np.ndarray:
    """Each cell's own voxels that touch another value in-plane (find_boundaries "inner" per
    (t, z) plane): two voxels wide between touching cells, centred on their border.

    cells : (t, z, y, x) integer ndarray. Returns a bool array of the same shape.
    """
    cells = _check_cells(cells, "cell borders")
    borders = np.zeros(cells.shape, dtype=bool)
    for t in range(cells.shape[0]):
        for z in range(cells.shape[1]):
            borders[t, z] = find_boundaries(cells[t, z], connectivity=1, mode="inner")
    return borders


def correction_labels(cells: np.ndarray, corrected: Iterable[int], labeller: str,
                      ring: int = 3, erased: np.ndarray | None = None) -> np.ndarray:
    """The partial label image that teaches a model the ``corrected`` cells.

    Known are the corrected cells and a ring of ``ring`` voxels around them (in-plane,
    4-neighbour steps), so their borders are taught from both sides; everything else is
    UNKNOWN (65535), which training leaves out. Membrane labellers get 1 on the cell
    borders (:func:`cell_borders`) and 0 elsewhere in the known part; "instance labels"
    gets the ids (and 0) the known voxels have.

    cells : (t, z, y, x) integer ndarray of cell ids (0 = no cell), ids below 65535.
    erased : (t, z, y, x) bool, where the user deleted false cells: known background (with
        its ring), so the model learns there is no cell there.
    Returns a (t, z, y, x) uint16 ndarray.
    """
    cells = _check_cells(cells, "correction labels")
    if erased is not None and np.shape(erased) != cells.shape:
        raise UnetslError(f"correction labels: the erased mask {np.shape(erased)} and the "
                          f"cells {cells.shape} differ in shape")
    name = get_labeller(labeller).name
    if name not in MEMBRANE_LABELLERS + ID_LABELLERS:
        raise UnetslError(f"correction labels: the labeller {name!r} does not read cells; "
                          f"use one of {', '.join(MEMBRANE_LABELLERS + ID_LABELLERS)}")
    if ring < 0:
        raise UnetslError(f"correction labels: ring must be >= 0, got {ring}")
    if cells.size and (cells.min() < 0 or cells.max() >= UNKNOWN):
        raise UnetslError(f"correction labels: cell ids must lie in 0..{UNKNOWN - 1}, got "
                          f"{cells.min()}..{cells.max()}")
    chosen = np.isin(cells, _ids(corrected))
    if erased is not None:
        chosen |= np.asarray(erased, dtype=bool) & (cells == 0)
    known = (ndi.binary_dilation(chosen, _PLANE_CROSS, iterations=ring) if ring and
             chosen.any() else chosen)
    out = np.full(cells.shape, UNKNOWN, dtype=np.uint16)
    values = cell_borders(cells) if name in MEMBRANE_LABELLERS else cells
    out[known] = values[known]
    return out


def keep_corrections(new_cells: np.ndarray, old_cells: np.ndarray,
                     corrected: Iterable[int], erased: np.ndarray | None = None
                     ) -> np.ndarray:
    """``new_cells`` with the ``corrected`` cells of ``old_cells`` pasted back.

    The corrected masks win over whatever the new segmentation drew there; a new cell more
    than half covered by corrected cells in a frame is removed from that frame (it is the
    corrected cell found again, or a piece of it); the rest of a new cell stays. A pasted
    cell keeps its id when no remaining new cell uses it, else it gets the next free id
    (the same in every frame), so a re-segmentation never loses the user's work.

    new_cells, old_cells : (t, z, y, x) integer ndarrays of one shape.
    erased : (t, z, y, x) bool where the user deleted false cells: a new cell more than half
        inside it is removed too (deleted cells stay deleted).
    Returns the merged (t, z, y, x) labels (int32 or wider).
    """
    new_cells = _check_cells(new_cells, "keep corrections")
    old_cells = _check_cells(old_cells, "keep corrections")
    if new_cells.shape != old_cells.shape:
        raise UnetslError(f"keep corrections: the new cells {new_cells.shape} and the "
                          f"corrected ones {old_cells.shape} differ in shape")
    dtype = np.promote_types(np.result_type(new_cells, old_cells), np.int32)
    out = new_cells.astype(dtype, copy=True)
    ids = _ids(corrected)
    pasted = np.isin(old_cells, ids)
    covering = pasted if erased is None else pasted | np.asarray(erased, dtype=bool)
    for t in range(out.shape[0]):
        _drop_covered(out[t], covering[t])
    out[pasted] = 0
    taken = set(np.unique(out).tolist())
    free = max(taken | set(ids.tolist()) | {0}) + 1
    for cell in ids.tolist():
        mask = pasted & (old_cells == cell)
        if cell in taken:
            cell, free = free, free + 1
        out[mask] = cell
    return out


def _drop_covered(frame: np.ndarray, pasted: np.ndarray) -> None:
    """Remove (in place) the cells of ``frame`` of which more than half lies in ``pasted``."""
    if not pasted.any():
        return
    labels, index = np.unique(frame, return_inverse=True)
    total = np.bincount(index.ravel(), minlength=len(labels))
    covered = np.bincount(index.ravel(), weights=pasted.ravel(), minlength=len(labels))
    drop = labels[(labels != 0) & (covered > total / 2)]
    frame[np.isin(frame, drop)] = 0


def pasted_ids(merged: np.ndarray, old_cells: np.ndarray, corrected: Iterable[int]
               ) -> dict[int, int]:
    """The id each corrected cell has in :func:`keep_corrections`' result (renumbered when
    its own was taken), for the cells still there: what stays marked as corrected."""
    found = {}
    for cell in _ids(corrected).tolist():
        where = np.flatnonzero(np.asarray(old_cells).ravel() == cell)
        if len(where):
            found[cell] = int(np.asarray(merged).ravel()[where[0]])
    return found
