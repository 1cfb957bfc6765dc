"""Cells from a probability file: read, check, segment frame by frame, track, measure, write.

The one file-level path behind ``segment_cells`` and ``predict_image --cells``: the pure
functions of :mod:`unetsl.cells` on the (t, c, z, y, x) image that :mod:`unetsl.io` reads,
with every check done before the long computation. Its array-level core,
:func:`segment_array`, is what the napari plugin calls on a layer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unetsl.atomic import check_writable
from unetsl.cells.export import write_labels_tiff, write_meshes, write_roi_zip
from unetsl.cells.measure import measure, write_csv
from unetsl.cells.segment import segment
from unetsl.cells.settings import CellSettings, check_mode
from unetsl.cells.tracking import split_gaps, track, write_ctc_tracks
from unetsl.errors import UnetslError
from unetsl.io.lazy import LazyImage, open_image

MESH_FORMATS = ("ply", "stl", "obj")


@dataclass
class CellsResult:
    """What one run made: the tracked labels (t, z, y, x), their table and the files written."""

    labels: np.ndarray
    table: dict[str, np.ndarray]
    tracks: list[Any]
    written: list[Path] = field(default_factory=list)


def default_output(probabilities: str | os.PathLike) -> Path:
    """``cells-<input>`` beside the input; a ``-prob`` suffix of predict_image is dropped."""
    p = Path(probabilities)
    name = p.name
    for suffix in (".ome.zarr", ".zarr", ".ome.tif", ".ome.tiff", ".tiff", ".tif", ".npy"):
        if name.lower().endswith(suffix):
            stem = name[: -len(suffix)]
            break
    else:
        stem, suffix = p.stem, p.suffix
    stem = stem.removesuffix("-prob")
    out_suffix = ".ome.zarr" if suffix in (".ome.zarr", ".zarr") else ".tif"
    return p.with_name(f"cells-{stem}{out_suffix}")


def open_probabilities(path: str | os.PathLike, channel: int) -> LazyImage:
    """Open a probability map and check it before any work: the channel exists and the
    pixels are floats (a label image is refused with what to give instead)."""
    image = open_image(path, depth_wanted=1)
    t, c, z, y, x = image.shape
    if not 0 <= channel < c:
        raise UnetslError(f"{path}: channel {channel} does not exist; the image has {c} "
                          f"channel(s) (t, c, z, y, x) = {tuple(image.shape)}")
    if not np.issubdtype(np.dtype(image.data.dtype), np.floating):
        raise UnetslError(
            f"{path}: holds {np.dtype(image.data.dtype).name} pixels, not probabilities; give "
            "the float map that predict_image --probabilities writes (<output>-prob.tif)")
    if min(y, x) < 2:
        raise UnetslError(f"{path}: image of (t, c, z, y, x) = {tuple(image.shape)} is too "
                          "small for cells")
    return image


def segment_file(
    probabilities: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    mode: str | None = None,
    channel: int = 0,
    settings: CellSettings | None = None,
    table: str | os.PathLike | None = None,
    rois: str | os.PathLike | None = None,
    meshes: str | os.PathLike | None = None,
    mesh_format: str = "ply",
    tracking: bool = True,
) -> CellsResult:
    """Segment, track and measure the cells of one probability file and write the results.

    Parameters
    ----------
    probabilities : TIFF / zarr / .npy float map, axes (t, c, z, y, x) as unetsl reads them
    output : label image to write (.tif: ImageJ; .zarr / .ome.zarr: OME-Zarr labels);
        default ``cells-<input>``
    mode : "membrane" (cells enclosed by membranes) or "foreground" (objects such as nuclei);
        None: ``settings.mode`` ("cell mode", membrane by default)
    channel : the channel that holds the membrane (or foreground) probability
    table, rois, meshes : optional CSV of measurements, ImageJ ROI zip (2D), mesh folder (3D)
    tracking : link cells over time points (a time series); res_track.txt is written beside
        the output
    """
    settings = settings or CellSettings()
    mode = check_mode(settings.mode if mode is None else mode)
    if mesh_format not in MESH_FORMATS:
        raise UnetslError(f"mesh format {mesh_format!r} must be one of {', '.join(MESH_FORMATS)}")
    image = open_probabilities(probabilities, channel)
    n_t, _, n_z, _, _ = image.shape
    output = Path(output) if output is not None else default_output(probabilities)
    if rois is not None and n_z > 1:
        raise UnetslError(f"ROI set: {probabilities} is a 3D stack (z = {n_z}); ImageJ ROI sets "
                          "hold 2D outlines, write meshes for 3D cells")
    if meshes is not None and n_z == 1:
        raise UnetslError(f"meshes: {probabilities} is 2D (z = 1); meshes are for 3D stacks, "
                          "write an ROI set for 2D outlines")
    check_writable([output, table, rois])
    check_writable([meshes], folders=True)

    # Only the chosen channel is kept (t, z, y, x): segment() works frame by frame, with a
    # few neighbouring frames for membranes a frame missed (settings.time_window).
    whole = (slice(None),) * 3
    maps = np.empty((n_t, *image.shape[2:]), dtype=np.float32)
    for t in range(n_t):
        maps[t] = image.data.read(t, *whole)[channel]
    try:
        result = segment_array(maps, image.spacing, mode=mode, settings=settings,
                               tracking=tracking)
    except UnetslError as err:  # name the file: the message speaks of "probabilities"
        raise UnetslError(f"{probabilities}: channel {channel}: {err}") from None
    labels, measured, tracks = result.labels, result.table, result.tracks

    written = [_write_labels(output, labels, image)]
    if tracks:  # the CTC format wants gap-free tracks: a gap starts a child track
        written.append(write_ctc_tracks(split_gaps(labels, tracks)[1], _tracks_path(output)))
    if table is not None:
        write_csv(measured, table)
        written.append(Path(table))
    if rois is not None:
        write_roi_zip(rois, labels)
        written.append(Path(rois))
    if meshes is not None:
        write_meshes(meshes, labels, image.spacing, fmt=mesh_format)
        written.append(Path(meshes))
    return CellsResult(labels, measured, tracks, [Path(p) for p in written])


def segment_array(
    maps: np.ndarray,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    *,
    mode: str | None = None,
    settings: CellSettings | None = None,
    tracking: bool = True,
) -> CellsResult:
    """Segment, track and measure the cells of a (t, z, y, x) probability map in memory.

    The steps of :func:`segment_file` after reading (segment_file calls it), for a map that
    is already an array, such as a napari layer. ``spacing`` is (z, y, x) in physical
    units; nothing is written (``written`` stays empty).
    """
    settings = settings or CellSettings()
    mode = check_mode(settings.mode if mode is None else mode)
    maps = np.asarray(maps)
    if not np.issubdtype(maps.dtype, np.floating):
        raise UnetslError(f"holds {maps.dtype.name} pixels, not probabilities; give a float "
                          "map in [0, 1] such as predict's probabilities")
    labels = segment(maps, mode=mode, spacing=spacing, settings=settings)
    tracks: list[Any] = []
    if tracking and labels.shape[0] > 1:
        labels, tracks = track(labels, settings)
    else:
        labels = _unique_ids(labels)
    membrane = maps if mode == "membrane" else None
    measured = measure(labels, spacing, membrane=membrane, tracks=tracks or None)
    return CellsResult(labels, measured, tracks)


def _unique_ids(labels: np.ndarray) -> np.ndarray:
    """Without tracking, ids are still unique over the whole image (frame by frame offsets),
    so that a table row and a label value name one cell."""
    out = labels.astype(np.int64, copy=True)
    offset = 0
    for t in range(out.shape[0]):
        frame = out[t]
        n = int(frame.max())
        frame[frame > 0] += offset
        offset += n
    return out.astype(np.int32)


def _tracks_path(output: Path) -> Path:
    return output.with_name(output.name.split(".")[0] + "-res_track.txt")


def _write_labels(output: Path, labels: np.ndarray, image: LazyImage) -> Path:
    name = output.name.lower()
    if name.endswith((".zarr", ".ome.zarr")):
        from unetsl.io.omezarr_write import write_ome_zarr

        data = labels[:, None]  # (t, 1, z, y, x)
        axes = ("t" if data.shape[0] > 1 else "") + ("z" if data.shape[2] > 1 else "") + "yx"
        dtype = np.uint16 if labels.max() < 2**16 else np.uint32
        write_ome_zarr(output, data.astype(dtype), axes=axes, spacing=image.spacing,
                       unit=image.unit, labels=True)  # napari opens a Labels layer
        return output
    write_labels_tiff(output, labels, image.spacing, unit=image.unit)
    return output
