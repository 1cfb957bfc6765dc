"""Output files by name: the one entry that predict and cells open their images through.

The file name says the format, as users expect from Fiji and napari: ``*.zarr`` /
``*.ome.zarr`` -> OME-Zarr (a folder), ``*.npy`` -> a NumPy array (t, c, z, y, x),
``*.ome.tif`` -> an OME-TIFF, anything else -> an ImageJ hyperstack TIFF. Every
writer is filled block by block through ``write(t, (zs, ys, xs), block)`` (the prediction
engine's sink interface) and appears under its final name only when complete (temporary file
or folder + rename), so a crash never leaves a half-written output.

To add a format: a writer class with ``write``/``close``, a suffix in :data:`OUTPUT_FORMATS`,
and a branch in :func:`open_output`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unetsl.atomic import atomic_path
from unetsl.errors import UnetslError
from unetsl.io.lazy import OutputTiff
from unetsl.io.omezarr_write import OutputOmeZarr, atomic_dir, output_axes

__all__ = ["OUTPUT_FORMATS", "OutputNpy", "open_output", "output_format", "split_suffix",
           "with_suffix", "write_output"]

#: file-name endings -> format, longest first (".ome.zarr" before ".zarr")
OUTPUT_FORMATS: dict[str, str] = {".ome.zarr": "zarr", ".zarr": "zarr", ".ome.tiff": "tiff",
                                  ".ome.tif": "tiff", ".tiff": "tiff", ".tif": "tiff",
                                  ".npy": "npy"}


def split_suffix(path: str | os.PathLike) -> tuple[str, str]:
    """(stem, suffix) of a file name, with the double suffixes kept whole
    ("a.ome.zarr" -> ("a", ".ome.zarr")); a name without a known suffix gives ("name", "")."""
    name = Path(os.fspath(path).rstrip("/")).name
    lower = name.lower()
    for suffix in OUTPUT_FORMATS:
        if lower.endswith(suffix):
            return name[: -len(suffix)], name[-len(suffix):]
    return name, ""


def output_format(path: str | os.PathLike) -> str:
    """"zarr", "npy" or "tiff" (the default for any other name), from the file name."""
    return OUTPUT_FORMATS.get(split_suffix(path)[1].lower(), "tiff")


def with_suffix(path: str | os.PathLike, extra: str) -> Path:
    """A sibling output named with ``extra`` before the suffix: out.tif + "-prob" ->
    out-prob.tif, out.ome.zarr -> out-prob.ome.zarr; a name without a known suffix gets .tif."""
    path = Path(path)
    stem, suffix = split_suffix(path)
    if not suffix:
        stem, suffix = (path.stem, ".tif") if path.suffix else (path.name, ".tif")
    return path.with_name(f"{stem}{extra}{suffix}")


class OutputNpy:
    """A .npy array (t, c, z, y, x) on disk, filled block by block through a memory map."""

    def __init__(self, path: str | os.PathLike, shape: Sequence[int], dtype: Any):
        self.path = os.fspath(path)
        self.array = np.lib.format.open_memmap(self.path, mode="w+", dtype=np.dtype(dtype),
                                               shape=tuple(int(s) for s in shape))

    def write(self, t: int, region: tuple[slice, slice, slice], block: np.ndarray) -> None:
        zs, ys, xs = region
        self.array[t, :, zs, ys, xs] = block

    def close(self) -> None:
        if self.array is not None:
            self.array.flush()
            self.array = None

    def __enter__(self) -> OutputNpy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def open_output(path: str | os.PathLike, shape: Sequence[int], dtype: Any, *,
                spacing: Sequence[float] = (1.0, 1.0, 1.0), unit: str = "pixel",
                time_as_depth: bool = False, labels: bool = False,
                like_axes: str | None = None, chunks: Sequence[int] | None = None, levels: int = 1,
                client: Any = None, frame_interval: float | None = None) -> Iterator[Any]:
    """A writer of a (t, c, z, y, x) image of ``shape`` at ``path``, its format chosen by
    the name; it replaces ``path`` when the ``with`` block ends without an error.

    labels : a label image (OME-Zarr: napari opens a Labels layer; lower levels by nearest
        neighbour). like_axes, chunks, levels, client : OME-Zarr only (the input's axes and
        chunks to copy, resolution levels, a Dask client that builds them).
    frame_interval : seconds between frames (ImageJ finterval, OME TimeIncrement, OME-Zarr
        t scale), None when unknown; a .npy array has no place for it.
    """
    target = Path(path)
    kind = output_format(target)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 5:
        raise UnetslError(f"{target}: expected a (t, c, z, y, x) shape, got {shape}")
    if kind == "zarr":
        with atomic_dir(target) as tmp:
            out = OutputOmeZarr(tmp, shape, dtype,
                                axes=output_axes(like_axes, shape, time_as_depth),
                                chunks=chunks, spacing=spacing, unit=unit,
                                time_as_depth=time_as_depth, levels=levels, labels=labels,
                                name=target.name.split(".")[0], frame_interval=frame_interval)
            out.client = client
            with out:
                yield out
        return
    with atomic_path(target) as tmp:
        if kind == "npy":
            writer = OutputNpy(tmp, shape, dtype)
        else:
            ome = split_suffix(target)[1].lower().startswith(".ome.")
            writer = OutputTiff(tmp, shape, dtype, spacing=spacing, unit=unit,
                                time_as_depth=time_as_depth, ome=ome,
                                frame_interval=frame_interval)
        with writer:
            yield writer


def write_output(path: str | os.PathLike, data: np.ndarray, **options: Any) -> Path:
    """Write a whole (t, c, z, y, x) array through :func:`open_output` (same options)."""
    data = np.asarray(data)
    if data.ndim != 5:
        raise UnetslError(f"{path}: expected a (t, c, z, y, x) array, got shape {data.shape}")
    every = (slice(None), slice(None), slice(None))
    with open_output(path, data.shape, data.dtype, **options) as out:
        for t in range(data.shape[0]):
            out.write(t, every, data[t])
    return Path(path)
