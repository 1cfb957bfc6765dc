"""Cell results in the formats people open them with: Fiji (TIFF, ROI sets) and mesh viewers.

Every writer goes through a temporary file in the destination folder and ``os.replace``, so an
interrupted run never leaves a truncated file that looks complete.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import roifile
import trimesh
from skimage.measure import find_contours, marching_cubes

from unetsl.atomic import atomic_path
from unetsl.cells.regions import CellRegion, frame_regions
from unetsl.cells.segment import check_spacing
from unetsl.errors import UnetslError
from unetsl.io.outputs import output_format, write_output

MESH_FORMATS = ("ply", "stl", "obj")
_FLOAT32_EXACT = 2**24  # float32 holds every integer up to this exactly


def _atomic(path: Path, write: Callable[[str], None]) -> Path:
    """Run write(temp path) in path's folder, then move the temp file onto path (with the
    permissions of the user's umask, as every file unetsl writes)."""
    if not path.parent.is_dir():
        raise UnetslError(f"folder for {path} does not exist")
    with atomic_path(path) as tmp:
        write(str(tmp))
    return path


def _labels4d(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 4 or not np.issubdtype(labels.dtype, np.integer):
        raise UnetslError(f"labels must be integer (t, z, y, x), got shape {labels.shape} "
                          f"dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise UnetslError(f"labels must be >= 0, got minimum {labels.min()}")
    return labels


def label_file_dtype(top: int, path: str | os.PathLike) -> np.dtype:
    """The smallest dtype that holds label ids up to ``top`` in the file format of ``path``.

    ImageJ TIFFs hold uint8/16 or float32 but not 32-bit integers, so ids above 65535 go to
    float32 there, which keeps ids exact (below 2**24) and equal to those of the CSV tables
    (renumbering would break that link); zarr and npy take uint32.
    """
    if top <= np.iinfo(np.uint16).max:
        return np.dtype(np.uint16)
    if output_format(path) != "tiff":
        return np.dtype(np.uint32)
    if top < _FLOAT32_EXACT:
        return np.dtype(np.float32)
    raise UnetslError(f"label id {top} too large for an ImageJ TIFF {path} (max 2**24); "
                      "write .ome.zarr or .npy instead")


def write_labels(path: str | os.PathLike, labels: np.ndarray,
                 spacing: Sequence[float] = (1.0, 1.0, 1.0), unit: str = "micron", *,
                 frame_interval: float | None = None) -> Path:
    """Write (t, z, y, x) labels with their scale in the format of the name
    (``unetsl.io.outputs``: an ImageJ TZYX hyperstack, OME-Zarr labels that napari opens as a
    Labels layer, or .npy); ``frame_interval`` (seconds between frames, None when unknown)
    keeps the movie's timing, so the cells line up with it in Fiji and napari."""
    labels = _labels4d(labels)
    check_spacing(spacing)
    if not Path(path).parent.is_dir():
        raise UnetslError(f"folder for {path} does not exist")
    dtype = label_file_dtype(int(labels.max()) if labels.size else 0, path)
    return write_output(path, labels[:, None].astype(dtype), spacing=tuple(spacing),
                        unit=unit, labels=True, frame_interval=frame_interval)


write_labels_tiff = write_labels  # the name of the TIFF-only writer of earlier versions


def cell_outline(mask: np.ndarray) -> np.ndarray:
    """The longest outline (n, 2) as (y, x) of a 2D mask, half-way between in and out pixels."""
    contours = find_contours(np.pad(mask, 1).astype(np.float32), 0.5)
    return max(contours, key=len) - 1.0


def write_roi_zip(path: str | os.PathLike, labels: np.ndarray) -> Path:
    """Write an ImageJ ROI set: one polygon per cell per frame, named by its id, at its frame.

    Entry names in the zip are ``<id>-t<frame>`` (unique); each ROI's own name is the id.
    Polygon vertices are in ImageJ pixel coordinates (pixel i spans i..i+1). 2D only: a 3D
    cell has no single outline.
    """
    labels = _labels4d(labels)
    if labels.shape[1] != 1:
        raise UnetslError(f"ROI sets hold 2D outlines; labels {labels.shape} have "
                          f"{labels.shape[1]} z planes (use write_meshes for 3D)")
    return write_region_rois(path, frame_regions(labels), labels.shape[0])


def write_region_rois(path: str | os.PathLike, regions: Iterable[CellRegion], n_t: int
                      ) -> Path:
    """:func:`write_roi_zip` of the cells of 2D regions (frames or blocks of ``n_t`` frames),
    in the order of (frame, id)."""
    found = []
    for region in regions:
        frame = region.labels[0]
        for cell, box in zip(region.ids.tolist(), region.boxes()):
            outline = cell_outline(frame[box[1:]] == cell)
            points = outline[:, ::-1] + [box[2].start + region.origin[2] + 0.5,
                                         box[1].start + region.origin[1] + 0.5]
            roi = roifile.ImagejRoi.frompoints(points, name=str(cell),
                                               t=region.t if n_t > 1 else None)  # 0-based
            roi.roitype = roifile.ROI_TYPE.POLYGON
            found.append((region.t, cell, roi))
    if not found:
        raise UnetslError(f"no cells to write to {path}: labels are all zero")
    found.sort(key=lambda entry: entry[:2])
    rois = [roi for _, _, roi in found]
    names = [f"{cell}-t{t + 1}" for t, cell, _ in found]

    def write(tmp: str) -> None:
        roifile.roiwrite(tmp, rois, name=names, mode="w")

    return _atomic(Path(path), write)


def cell_mesh(mask: np.ndarray, spacing: Sequence[float], offset: Sequence[float] = (0, 0, 0)
              ) -> trimesh.Trimesh:
    """A closed triangle mesh of a (z, y, x) mask, vertices (x, y, z) in physical units: the
    order mesh files and viewers (MeshLab, ParaView, Blender, trimesh) read them in."""
    verts, faces, _, _ = marching_cubes(np.pad(mask, 1).astype(np.float32), 0.5,
                                        spacing=tuple(spacing))
    verts = verts - np.asarray(spacing) + np.asarray(offset) * np.asarray(spacing)
    mesh = trimesh.Trimesh(verts[:, ::-1], faces, process=True)  # (z, y, x) -> (x, y, z)
    if mesh.volume < 0:
        mesh.invert()
    return mesh


def write_meshes(folder: str | os.PathLike, labels: np.ndarray,
                 spacing: Sequence[float] = (1.0, 1.0, 1.0), fmt: str = "ply") -> list[Path]:
    """Write one mesh per 3D cell per frame, ``cell-<id>-t<frame>.<fmt>``; returns the paths.

    Vertices are (x, y, z) in physical units (marching cubes with the spacing), so a mesh tool
    shows the cell as the image does and its volumes and areas match the CSV table.
    """
    labels = _labels4d(labels)
    spacing = check_spacing(spacing)
    if fmt not in MESH_FORMATS:
        raise UnetslError(f"mesh format {fmt!r} must be one of {MESH_FORMATS}")
    if labels.shape[1] < 2:
        raise UnetslError(f"meshes need 3D labels; labels {labels.shape} have one z plane")
    return write_region_meshes(folder, frame_regions(labels), spacing, fmt)


def write_region_meshes(folder: str | os.PathLike, regions: Iterable[CellRegion],
                        spacing: Sequence[float], fmt: str = "ply") -> list[Path]:
    """:func:`write_meshes` of the cells of 3D regions (frames or blocks)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for region in regions:
        for cell, box in zip(region.ids.tolist(), region.boxes()):
            corner = [s.start + o for s, o in zip(box, region.origin)]
            mesh = cell_mesh(region.labels[box] == cell, spacing, corner)
            payload = mesh.export(file_type=fmt)
            data = payload.encode() if isinstance(payload, str) else payload

            def write(tmp: str, data: bytes = data) -> None:
                Path(tmp).write_bytes(data)

            name = f"cell-{cell:05d}-t{region.t:03d}.{fmt}"
            written.append(_atomic(folder / name, write))
    return written
