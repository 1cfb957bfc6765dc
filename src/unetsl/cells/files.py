"""Cells from a probability file: read, check, segment frame by frame, track, measure, write.

The one file-level path behind ``segment_cells`` and ``predict_image --cells``: the pure
functions of :mod:`unetsl.cells` on the (t, c, z, y, x) image that :mod:`unetsl.io` reads,
with every check done before the long computation. Its array-level core,
:func:`segment_array`, is what the napari plugin calls on a layer.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unetsl.atomic import check_writable
from unetsl.cells.block_files import file_regions, segment_file_blocks
from unetsl.cells.blocks import BlockPlan, plan_blocks
from unetsl.cells.export import write_labels, write_region_meshes, write_region_rois
from unetsl.cells.measure import measure, measure_regions, write_csv
from unetsl.cells.regions import CellRegion, frame_regions
from unetsl.cells.segment import segment
from unetsl.cells.settings import CellSettings, check_mode
from unetsl.cells.tracking import split_gaps, track, tracks_path, write_ctc_tracks
from unetsl.errors import UnetslError
from unetsl.io.lazy import LazyImage, open_image
from unetsl.io.outputs import output_format, split_suffix

log = logging.getLogger("unetsl")

MESH_FORMATS = ("ply", "stl", "obj")


@dataclass(frozen=True)
class CellFile:
    """A kind of file the cells are saved as, beside the label image."""

    description: str
    #: the extension Fiji, roifile and spreadsheets need (None: a folder)
    extension: str | None
    #: "2d" or "3d" when only that kind of labels can be written, else None
    needs: str | None
    write: Callable[[Path, CellsResult, tuple[float, float, float], str], Any]


#: every cells file: segment_cells' --table/--rois/--meshes and napari's Save buttons
CELL_FILES: dict[str, CellFile] = {
    "table": CellFile("the measurements table (CSV)", ".csv", None,
                      lambda path, result, spacing, fmt: write_csv(result.table, path)),
    "rois": CellFile("an ImageJ ROI set", ".zip", "2d",
                     lambda path, result, spacing, fmt: write_region_rois(
                         path, result.regions(), int(result.frames or 0))),
    "meshes": CellFile("a folder of cell meshes", None, "3d",
                       lambda path, result, spacing, fmt: write_region_meshes(
                           path, result.regions(), spacing, fmt=fmt)),
}


def with_extension(path: str | os.PathLike, kind: str) -> Path:
    """``path`` with the extension of ``kind`` added when it lacks it ("cells" ->
    cells.csv, "cells-rois" -> cells-rois.zip: Fiji and roifile reject a ROI set
    without .zip)."""
    path, wanted = Path(path), CELL_FILES[kind].extension
    if wanted is None or path.suffix.lower() == wanted:
        return path
    return path.with_name(path.name + wanted)


def check_cell_file(kind: str, source: str | os.PathLike, n_z: int) -> None:
    """One line when labels of ``n_z`` planes cannot be written as ``kind``."""
    needs = CELL_FILES[kind].needs
    if needs == "2d" and n_z > 1:
        raise UnetslError(f"ROI set: {source} is a 3D stack (z = {n_z}); ImageJ ROI sets "
                          "hold 2D outlines, write meshes for 3D cells")
    if needs == "3d" and n_z == 1:
        raise UnetslError(f"meshes: {source} is 2D (z = 1); meshes are for 3D stacks, "
                          "write an ROI set for 2D outlines")


def write_cell_file(kind: str, path: str | os.PathLike, result: CellsResult,
                    spacing: tuple[float, float, float], mesh_format: str = "ply") -> Path:
    """Write ``result`` as ``kind`` (a key of CELL_FILES) at ``path``."""
    CELL_FILES[kind].write(Path(path), result, spacing, mesh_format)
    return Path(path)


@dataclass
class CellsResult:
    """What one run made: the tracked labels (t, z, y, x), their table and the files written.

    A block-by-block run (frames larger than memory) keeps its labels on disk only:
    ``labels`` is None, ``count``/``frames`` say what was written and ``read_back`` gives
    the cells block by block from the label file."""

    labels: np.ndarray | None
    table: dict[str, np.ndarray]
    tracks: list[Any]
    written: list[Path] = field(default_factory=list)
    count: int | None = None
    frames: int | None = None
    read_back: Callable[[], Iterable[CellRegion]] | None = None

    def __post_init__(self) -> None:
        if self.labels is not None:
            ids = self.table.get("id", ())
            self.count = len(set(np.asarray(ids).tolist())) if len(ids) else 0
            self.frames = int(self.labels.shape[0])

    def regions(self) -> Iterable[CellRegion]:
        """The cells, frame by frame in memory or block by block from the label file."""
        if self.labels is not None:
            return frame_regions(self.labels)
        if self.read_back is None:
            raise UnetslError("these cells were not kept: segment them again")
        return self.read_back()


def default_output(probabilities: str | os.PathLike) -> Path:
    """``cells-<input>`` beside the input; a ``-prob`` suffix of predict_image is dropped."""
    p = Path(probabilities)
    stem, suffix = split_suffix(p)
    if not suffix:
        stem = p.stem
    stem = stem.removesuffix("-prob")
    out_suffix = ".ome.zarr" if output_format(p) == "zarr" else ".tif"
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
    client: Any = None,
    confidence: bool = False,
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
    client : a Dask client whose workers segment the blocks of frames larger than
        ``settings.block_voxels`` (such frames are done block by block either way)
    confidence : add each cell's confidence to the table (the least clear cells, to review
        first; :func:`unetsl.cells.confidence.cell_confidence`)
    """
    settings = settings or CellSettings()
    mode = check_mode(settings.mode if mode is None else mode)
    if mesh_format not in MESH_FORMATS:
        raise UnetslError(f"mesh format {mesh_format!r} must be one of {', '.join(MESH_FORMATS)}")
    image = open_probabilities(probabilities, channel)
    n_t, _, n_z, _, _ = image.shape
    output = Path(output) if output is not None else default_output(probabilities)
    files = {kind: path for kind, path in (("table", table), ("rois", rois),
                                           ("meshes", meshes)) if path is not None}
    for kind in files:
        check_cell_file(kind, probabilities, n_z)
    check_writable([output, table, rois])
    check_writable([meshes], folders=True)

    boundary_channel = choose_boundary_channel(settings, mode, channel, image.shape[1],
                                               probabilities)
    plan = plan_blocks(image.shape[2:], image.spacing, settings)
    if plan is not None:  # frames larger than "cell block voxels": block by block
        return _segment_file_blocks(image, output, plan, files, mode=mode, settings=settings,
                                    channel=channel, boundary_channel=boundary_channel,
                                    client=client, tracking=tracking, mesh_format=mesh_format,
                                    confidence=confidence)
    maps = _channel_maps(image, channel)
    boundary = None if boundary_channel is None else _channel_maps(image, boundary_channel)
    try:
        result = segment_array(maps, image.spacing, mode=mode, settings=settings,
                               tracking=tracking, boundary=boundary, confidence=confidence)
    except UnetslError as err:  # name the file: the message speaks of "probabilities"
        raise UnetslError(f"{probabilities}: channel {channel}: {err}") from None
    labels, tracks = result.labels, result.tracks

    written = [write_labels(output, labels, image.spacing, unit=image.unit,
                            frame_interval=image.frame_interval)]
    if tracks:  # ids as in the label image: segment_array already split the gaps
        written.append(write_ctc_tracks(tracks, tracks_path(output)))
    for kind, path in files.items():
        written.append(write_cell_file(kind, path, result, image.spacing, mesh_format))
    result.written = [Path(p) for p in written]
    return result


def _segment_file_blocks(image: LazyImage, output: Path, plan: BlockPlan,
                         files: dict[str, Any], *, mode: str, settings: CellSettings,
                         channel: int, boundary_channel: int | None, client: Any,
                         tracking: bool, mesh_format: str, confidence: bool = False
                         ) -> CellsResult:
    """segment_file for frames larger than memory: labels and tracks block by block, then
    the table, ROIs and meshes from the label file read back block by block."""
    count, tracks = segment_file_blocks(image, output, plan, mode=mode, settings=settings,
                                        channel=channel, boundary_channel=boundary_channel,
                                        client=client, tracking=tracking)
    result = CellsResult(None, {}, tracks, [output], count=count, frames=image.shape[0],
                         read_back=lambda: file_regions(output, plan))
    if tracks:
        result.written.append(write_ctc_tracks(tracks, tracks_path(output)))
    if "table" in files:  # the membrane's mean on each border; any probability: confidence
        probability = (image, channel) if mode == "membrane" or confidence else None
        boundary = boundary_channel if confidence else None
        result.table = measure_regions(file_regions(output, plan, probability, boundary),
                                       image.spacing, flat=image.shape[2] == 1,
                                       with_membrane=mode == "membrane", tracks=tracks,
                                       confidence=confidence, mode=mode)
    for kind, path in files.items():
        result.written.append(write_cell_file(kind, path, result, image.spacing, mesh_format))
    return result


def _channel_maps(image: LazyImage, channel: int) -> np.ndarray:
    """(t, z, y, x) float32 of one channel: segment() works frame by frame, with a few
    neighbouring frames for membranes a frame missed (settings.time_window)."""
    whole = (slice(None),) * 3
    maps = np.empty((image.shape[0], *image.shape[2:]), dtype=np.float32)
    for t in range(image.shape[0]):
        maps[t] = image.data.read(t, *whole)[channel]
    return maps


def choose_boundary_channel(settings: CellSettings, mode: str, channel: int, n_channels: int,
                            source: Any) -> int | None:
    """The channel holding object boundaries ("cell boundary channel"), or None.

    Unset: in foreground mode, channel 1 of a 2-channel map whose channel 0 is the foreground
    (what a model trained with "instance labels" predicts), said in an info line."""
    chosen = settings.boundary_channel
    if chosen is None:
        if mode == "foreground" and n_channels == 2 and channel == 0:
            log.info(f"cells: {source}: channel 1 read as the objects' boundary (a model of "
                     '"instance labels"); -D "cell boundary channel=-1" seeds from the '
                     "distance transform instead")
            return 1
        return None
    if chosen == -1:
        return None
    if mode != "foreground":
        raise UnetslError(f'"cell boundary channel" is for "cell mode" foreground, not {mode}')
    if chosen >= n_channels or chosen == channel:
        raise UnetslError(f'{source}: "cell boundary channel" {chosen} must be another of its '
                          f"{n_channels} channel(s) than the foreground channel {channel}")
    return chosen


def segment_array(
    maps: np.ndarray,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    *,
    mode: str | None = None,
    settings: CellSettings | None = None,
    tracking: bool = True,
    boundary: np.ndarray | None = None,
    confidence: bool = False,
) -> CellsResult:
    """Segment, track and measure the cells of a (t, z, y, x) probability map in memory.

    The steps of :func:`segment_file` after reading (segment_file calls it), for a map that
    is already an array, such as a napari layer. ``spacing`` is (z, y, x) in physical
    units; ``boundary`` (same shape, foreground mode) the objects' boundary probability;
    ``confidence`` adds that column to the table; nothing is written (``written`` stays
    empty). With tracking, ids follow the Cell Tracking Challenge: each id lives in one
    unbroken run of frames, and a cell missed for a frame or two (``track_max_gap``)
    continues as a child id (``whole_tracks`` joins the pieces).
    """
    settings = settings or CellSettings()
    mode = check_mode(settings.mode if mode is None else mode)
    maps = np.asarray(maps)
    if not np.issubdtype(maps.dtype, np.floating):
        raise UnetslError(f"holds {maps.dtype.name} pixels, not probabilities; give a float "
                          "map in [0, 1] such as predict's probabilities")
    labels = segment(maps, mode=mode, spacing=spacing, settings=settings, boundary=boundary)
    tracks: list[Any] = []
    if tracking and labels.shape[0] > 1:
        # One id scheme for the label image, table and track file: the Cell Tracking
        # Challenge's, where a cell missed for a frame comes back as a child track (the
        # table's "track" column joins the pieces again).
        labels, tracks = split_gaps(*track(labels, settings))
    else:
        labels = _unique_ids(labels)
    membrane = maps if mode == "membrane" else None
    foreground = maps if mode == "foreground" and confidence else None
    measured = measure(labels, spacing, membrane=membrane, tracks=tracks or None,
                       foreground=foreground, boundary=boundary if foreground is not None
                       else None, confidence=confidence)
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
