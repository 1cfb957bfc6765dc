"""Images read and written piece by piece, so that prediction memory does not follow image size.

Input: ``open_image`` gives the same (t, c, z, y, x) view, calibration and 2D-time-series
rule as ``unetsl.io.tiff.read_image``, but reads only the blocks asked for: uncompressed TIFFs
by positional reads of whole rows (no memory map, so neither resident memory nor address
space grows with the file), compressed or tiled TIFFs through tifffile's zarr store, zarr
and OME-Zarr folders through zarr, .npy through a read-only memory map. Layouts it cannot
view lazily (e.g. channels spread over two TIFF axes) fall back to ``read_image``.

Output: ``OutputTiff`` creates the ImageJ hyperstack (TZCYX, the input's pixel size, the
same file ``unetsl.io.tiff.write_like`` writes) with its data region empty, and ``write`` puts
blocks in place with positional writes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from unetsl.errors import UnetslError
from unetsl.io import tiff as uio
from unetsl.io import timing
from unetsl.io.omezarr import open_zarr

__all__ = ["LazyImage", "OutputTiff", "open_image"]


@dataclass
class LazyImage:
    """An image whose pixels are read on demand.

    data : has ``shape`` (t, c, z, y, x), ``dtype`` and ``read(t, zs, ys, xs) -> (c, z, y, x)``.
    spacing, unit, time_as_depth, path, frame_interval : as ``unetsl.io.tiff.Image``.
    """

    data: Any
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    unit: str = "pixel"
    time_as_depth: bool = False
    path: str | None = None
    frame_interval: float | None = None

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        return self.data.shape


class _AxesView:
    """A (t, c, z, y, x) view of an array-like with named axes (tifffile letters).

    ``swap_tz`` exchanges t and z (the original's rule for 2D time series).
    """

    def __init__(self, array: Any, axes: str, swap_tz: bool = False, source: str = "image"):
        axes = axes.upper()
        targets: dict[int, int] = {}
        for i, (letter, n) in enumerate(zip(axes, array.shape, strict=True)):
            target = uio._AXIS_TARGET.get(letter)
            if target is None:
                if n != 1:
                    raise _NotLazy(f"{source}: axis {letter!r} of size {n}")
                continue
            if swap_tz and target in (0, 2):
                target = 2 - target
            if target in targets.values():
                if n == 1:
                    continue
                other = next(k for k, v in targets.items() if v == target)
                if array.shape[other] != 1:
                    raise _NotLazy(f"{source}: two axes for one target in {axes!r}")
                del targets[other]
            targets[i] = target
        if set(targets.values()) - {0, 1, 2, 3, 4} or 3 not in targets.values() \
                or 4 not in targets.values():
            raise _NotLazy(f"{source}: axes {axes!r}")
        self.array = array
        self.source = source
        self.targets = targets
        self.dtype = np.dtype(array.dtype)
        shape = [1] * 5
        for i, target in targets.items():
            shape[target] = int(array.shape[i])
        self.shape = tuple(shape)

    def read(self, t: int, zs: slice, ys: slice, xs: slice) -> np.ndarray:
        wanted = {0: t, 1: slice(None), 2: zs, 3: ys, 4: xs}
        key = []
        kept = []
        for i in range(len(self.array.shape)):
            target = self.targets.get(i)
            if target is None:
                key.append(0)
            elif target == 0:
                key.append(t)
            else:
                key.append(wanted[target])
                kept.append(target)
        try:
            block = np.asarray(self.array[tuple(key)])
        except (IndexError, UnetslError):
            raise
        except Exception as exc:  # a damaged or truncated compressed file: codecs raise many
            raise UnetslError(f"{self.source}: cannot read the pixels "
                              f"({uio._one_line(exc)})") from exc
        order = sorted(range(len(kept)), key=lambda k: kept[k])
        block = block.transpose(order)
        present = sorted(kept)
        for target in (1, 2, 3, 4):
            if target not in present:
                block = np.expand_dims(block, target - 1)
        return block


class _NotLazy(Exception):
    pass


class _RawTiffArray:
    """The contiguous, uncompressed data of a TIFF series, read with os.pread.

    Supports basic indexing (integers and step-1 slices) over ``shape``; every read fetches
    whole rows, so memory is bounded by the block asked for.
    """

    def __init__(self, path: str, offset: int, shape: tuple[int, ...], dtype: np.dtype,
                 byteorder: str = "="):
        self.path, self.offset = path, int(offset)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype).newbyteorder("=")  # what reads return
        self.file_dtype = np.dtype(dtype).newbyteorder(byteorder)  # as stored (Fiji: big-endian)
        self.fd: int | None = None

    def __getitem__(self, key: tuple) -> np.ndarray:
        if self.fd is None:
            self.fd = os.open(self.path, os.O_RDONLY)
        ranges, squeeze = [], []
        for i, (k, n) in enumerate(zip(key, self.shape, strict=True)):
            if isinstance(k, slice):
                start, stop, step = k.indices(n)
                if step != 1:
                    raise IndexError("step slices are not supported")
                ranges.append(range(start, max(start, stop)))
            else:
                k = int(k) + (n if int(k) < 0 else 0)
                ranges.append(range(k, k + 1))
                squeeze.append(i)
        lead, (ys, xs) = ranges[:-2], ranges[-2:]
        width = self.shape[-1]
        item = self.dtype.itemsize
        out = np.empty([len(r) for r in ranges], dtype=self.dtype)
        strides = np.cumprod([1, *self.shape[::-1]])[::-1][1:]  # elements per step of each axis
        for idx in np.ndindex(*[len(r) for r in lead]):
            plane = sum((lead[a][i]) * int(strides[a]) for a, i in enumerate(idx))
            if len(ys) == 0 or len(xs) == 0:
                continue
            start = self.offset + (plane + ys.start * width) * item
            nbytes = len(ys) * width * item
            raw = os.pread(self.fd, nbytes, start)
            if len(raw) != nbytes:
                raise UnetslError(f"{self.path}: file is truncated")
            rows = np.frombuffer(raw, dtype=self.file_dtype).reshape(len(ys), width)
            out[idx] = rows[:, xs.start:xs.stop]
        return out.squeeze(axis=tuple(squeeze)) if squeeze else out

    def __del__(self) -> None:
        if getattr(self, "fd", None) is not None:
            os.close(self.fd)


def open_image(path: str | os.PathLike, *, depth_wanted: int = 1) -> LazyImage:
    """Open an image for block reads: TIFF, zarr / OME-Zarr folder or .npy.

    Same axes, calibration and 2D-time-series rule as ``unetsl.io.tiff.read_image``.
    """
    name = str(path)
    p = Path(name)
    if p.is_dir() and (p.suffix.lower() == ".zarr" or (p / "zarr.json").exists()
                       or (p / ".zarray").exists() or (p / ".zgroup").exists()):
        return _open_zarr(name, depth_wanted)
    if p.is_dir():
        raise UnetslError(f"{name}: is a folder but not a zarr store; expected an image file")
    if not p.is_file():
        raise UnetslError(f"{name}: no such file")
    try:
        if p.suffix.lower() == ".npy":
            try:
                array = np.load(name, mmap_mode="r", allow_pickle=False)
            except Exception as exc:
                raise UnetslError(f"{name}: cannot read .npy ({uio._one_line(exc)})") from exc
            if array.ndim not in uio._NPY_AXES:
                raise _NotLazy(name)
            return _lazy(array, uio._NPY_AXES[array.ndim], name, depth_wanted)
        return _open_tiff(name, depth_wanted)
    except _NotLazy:
        image = uio.read_image(name, depth_wanted=depth_wanted)
        from unetsl.io.arrays import ArraySource

        return LazyImage(ArraySource(image.data), image.spacing, image.unit,
                         image.time_as_depth, name, image.frame_interval)


def _lazy(array, axes: str, name: str, depth_wanted: int, spacing=(1.0, 1.0, 1.0),
          unit: str = "pixel", frame_interval: float | None = None) -> LazyImage:
    view = _AxesView(array, axes, source=name)
    t, _, z = view.shape[:3]
    swap = depth_wanted > 1 and t > 1 and z == 1
    if swap:
        view = _AxesView(array, axes, swap_tz=True, source=name)
    return LazyImage(view, tuple(spacing), unit, swap, name, frame_interval)


def _open_tiff(name: str, depth_wanted: int) -> LazyImage:
    try:
        tif = tifffile.TiffFile(name)
    except tifffile.TiffFileError as exc:
        raise UnetslError(f"{name}: not a readable TIFF file ({uio._one_line(exc)})") from exc
    except Exception as exc:
        raise UnetslError(f"{name}: cannot read image ({uio._one_line(exc)})") from exc
    with tif:
        if not tif.series:
            raise UnetslError(f"{name}: TIFF file holds no image")
        series = tif.series[0]
        spacing, unit, interval = uio.tiff_calibration(tif)
        axes, shape, dtype = series.axes, tuple(series.shape), series.dtype
        offset = series.dataoffset
        if offset is not None and dtype is not None and len(shape) >= 2:
            needed = int(offset) + int(np.prod(shape)) * np.dtype(dtype).itemsize
            if os.path.getsize(name) < needed:  # found now, not at the last tile
                raise UnetslError(f"{name}: file is truncated ({os.path.getsize(name)} bytes; "
                                  f"its {tuple(shape)} {np.dtype(dtype).name} pixels end at "
                                  f"byte {needed})")
            array: Any = _RawTiffArray(name, offset, shape, dtype, tif.byteorder)
        else:
            try:
                import zarr
            except ImportError as exc:  # pragma: no cover - zarr is a dependency
                raise _NotLazy(name) from exc
            array = zarr.open(series.aszarr(), mode="r")
            if isinstance(array, zarr.Group):  # a pyramid: the full resolution
                array = array["0"]
    return _lazy(array, axes, name, depth_wanted, spacing, unit, interval)


def _open_zarr(name: str, depth_wanted: int) -> LazyImage:
    """zarr arrays and OME-Zarr images through ``unetsl.io.omezarr`` (one reader for both the
    single-process and the Dask paths)."""

    image = open_zarr(name, depth_wanted=depth_wanted)
    return LazyImage(image.data, image.spacing, image.unit, image.time_as_depth, name,
                     image.frame_interval)


#: unetsl's unit names -> OME's UnitsLength names (others are left out of OME metadata)
_OME_UNITS = {"micron": "µm", "microns": "µm", "um": "µm", "µm": "µm", "nm": "nm",
              "mm": "mm", "pixel": "pixel"}


def _ome_metadata(spacing: tuple[float, float, float], unit: str,
                  frame_interval: float | None = None) -> dict:
    """OME-XML pixel sizes (z, y, x) in OME's unit names and, when known, the frame interval
    (TimeIncrement in s), for tifffile's ``ome=True``."""
    metadata: dict[str, Any] = {"axes": "TZCYX"}
    for axis, size in zip("ZYX", spacing):
        metadata[f"PhysicalSize{axis}"] = size
        if unit in _OME_UNITS:
            metadata[f"PhysicalSize{axis}Unit"] = _OME_UNITS[unit]
    if frame_interval is not None:
        metadata.update(TimeIncrement=frame_interval, TimeIncrementUnit=timing.OME_TIME_UNIT)
    return metadata


class OutputTiff:
    """An ImageJ hyperstack (TZCYX) on disk, filled block by block; an OME-TIFF with the
    same layout when ``ome`` (what a name ending in .ome.tif promises).

    shape : (t, c, z, y, x) of the arrays written (the internal layout); with
        ``time_as_depth`` z holds the frames of a 2D time series and goes back to T in the
        file, as ``unetsl.io.tiff.write_like`` does. The file is complete once every voxel has
        been written (unwritten voxels read as 0).
    frame_interval : seconds between frames (ImageJ finterval, OME TimeIncrement), or None.
    """

    def __init__(self, path: str | os.PathLike, shape: tuple[int, ...], dtype, *,
                 spacing=(1.0, 1.0, 1.0), unit: str = "pixel", time_as_depth: bool = False,
                 ome: bool = False, frame_interval: float | None = None):
        self.path = str(path)
        self.dtype = np.dtype(dtype)
        if self.dtype not in uio._IMAGEJ_DTYPES:
            raise UnetslError(f"{path}: ImageJ cannot store dtype {self.dtype}")
        t, c, z, y, x = (int(s) for s in shape)
        self.time_as_depth = time_as_depth
        self.file_shape = (z, t, c, y, x) if time_as_depth else (t, z, c, y, x)
        sz, sy, sx = (float(s) for s in spacing)
        if min(sz, sy, sx) <= 0:
            raise UnetslError(f"{path}: pixel size must be positive, got {tuple(spacing)}")
        interval = timing.check_interval(frame_interval, path)
        if ome:
            kind = {"ome": True, "metadata": _ome_metadata((sz, sy, sx), unit, interval)}
        else:
            kind = {"imagej": True, "metadata": uio.imagej_metadata(sz, unit, interval)}
        result = tifffile.imwrite(self.path, shape=self.file_shape, dtype=self.dtype,
                                  photometric="minisblack", resolution=(1.0 / sx, 1.0 / sy),
                                  returnoffset=True, **kind)
        if result is None:
            raise UnetslError(f"{path}: could not create a contiguous TIFF")
        self.offset = int(result[0])
        self.fd = os.open(self.path, os.O_RDWR)

    def write(self, t: int, region: tuple[slice, slice, slice], block: np.ndarray) -> None:
        """Write block (c, z, y, x) at time point ``t`` and (zs, ys, xs) of the internal layout."""
        block = np.asarray(block)
        if block.dtype != self.dtype:
            block = block.astype(self.dtype)
        ft, fz, fc, fy, fx = self.file_shape
        zs, ys, xs = region
        z0, y0, x0 = zs.start or 0, ys.start or 0, xs.start or 0
        item = self.dtype.itemsize
        full_rows = x0 == 0 and block.shape[3] == fx
        for c in range(block.shape[0]):
            for k in range(block.shape[1]):
                zi = z0 + k
                frame, plane = (zi, t) if self.time_as_depth else (t, zi)
                index = ((frame * fz + plane) * fc + c) * fy
                rows = np.ascontiguousarray(block[c, k])
                if full_rows:
                    os.pwrite(self.fd, rows.data, self.offset + (index + y0) * fx * item)
                else:
                    for r in range(rows.shape[0]):
                        start = self.offset + ((index + y0 + r) * fx + x0) * item
                        os.pwrite(self.fd, rows[r].data, start)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> OutputTiff:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
