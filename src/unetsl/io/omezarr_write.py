"""Writing OME-Zarr images and labels, block by block and atomically (renamed into place).

What the library does and what is ours: the NGFF metadata (``multiscales`` with its axes,
units and scale transforms, the 0.5 ``ome`` namespace and version, ``image-label``) is
written by ome-zarr's ``ome_zarr.writer`` functions for the ``ome_zarr.format`` of the
version asked for, which also gives the zarr format and chunk key encoding. The rest is ours
because the library does not fit it: ``ome_zarr.writer.write_image`` wants the whole image as
a NumPy or Dask array and builds its own pyramid (other scales, translations, compression),
while predictions arrive as rows of tiles that are gathered into whole chunk rows
(``row_buffer``), written by Dask workers through ``ZarrTarget``, or downsampled chunk row
by chunk row (``pyramid``); the store is written under a temporary name and renamed into
place (``atomic_dir``); zarr v3 arrays carry their axes as dimension names.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numcodecs import Blosc
from zarr.codecs import BloscCodec

from unetsl.errors import UnetslError
from unetsl.io.omezarr import AXES, NGFF_VERSIONS, _one_line, _zarr, ngff_unit
from unetsl.io.pyramid import _downsample_into
from unetsl.io.row_buffer import ChunkRowBuffer
from unetsl.io.timing import NGFF_TIME_UNIT, check_interval

# ----------------------------------------------------------------------------------- writing


def output_axes(like_axes: str | None, shape: Sequence[int], time_as_depth: bool = False) -> str:
    """The file axes of an output of internal ``shape`` (t, c, z, y, x).

    The axes of the input (``like_axes``), plus any axis whose size is above 1 (e.g. c for
    several probability channels; t for the frames of a 2D time series); always y and x.
    """
    t, c, z, y, x = shape
    file_shape = dict(zip(AXES, (z, c, t, y, x) if time_as_depth else (t, c, z, y, x)))
    wanted = set(like_axes.lower()) if like_axes else set()
    return "".join(a for a in AXES if a in wanted or a in "yx" or file_shape[a] > 1)


def default_chunks(shape: Sequence[int], dtype: Any, *, target_bytes: int = 8 * 2**20
                   ) -> tuple[int, int, int, int, int]:
    """Chunks (t, c, z, y, x) for a new array: one time point and one channel per chunk,
    y and x up to 512, z as deep as fits ``target_bytes`` (at most 64)."""
    t, c, z, y, x = (int(s) for s in shape)
    cy, cx = min(y, 512), min(x, 512)
    item = np.dtype(dtype).itemsize
    cz = max(1, min(z, 64, target_bytes // max(cy * cx * item, 1)))
    return (1, 1, cz, cy, cx)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path``.

    The folder version of ``unetsl.atomic.atomic_path``: a crash leaves ``path`` as it was
    (an existing store is moved aside only for the instant of the swap) and no half-written
    store under the final name.
    """
    target = Path(os.fspath(path).rstrip("/"))
    folder = target.parent if str(target.parent) else Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".ome.zarr" if target.name.lower().endswith(".ome.zarr") else target.suffix
    stem = target.name[: -len(suffix)] if suffix else target.name
    tmp = Path(tempfile.mkdtemp(prefix=f".{stem}-", suffix=suffix, dir=folder))
    try:
        yield tmp
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)
        old = None
        if target.exists() or target.is_symlink():
            if target.is_dir() and not target.is_symlink():
                old = Path(tempfile.mkdtemp(prefix=f".{stem}-old-", dir=folder))
                old.rmdir()
                os.replace(target, old)
            else:
                target.unlink()
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _compressors(version: str, dtype: np.dtype, compress: bool = True):
    if not compress:
        return None
    if version == "0.4":

        return Blosc(cname="zstd", clevel=3, shuffle=Blosc.BITSHUFFLE if dtype.itemsize == 1
                     else Blosc.SHUFFLE)

    return BloscCodec(cname="zstd", clevel=3,
                      shuffle="bitshuffle" if dtype.itemsize == 1 else "shuffle")


class _Layout:
    """Maps internal (t, c, z, y, x) regions and blocks onto the file's axes."""

    def __init__(self, axes: str, time_as_depth: bool):
        self.axes = axes
        self.time_as_depth = time_as_depth
        where = {a: i for i, a in enumerate(AXES)}
        if time_as_depth:
            where["t"], where["z"] = 2, 0
        self.internal = [where[a] for a in axes]  # internal axis of each file axis

    def file_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        return tuple(int(shape[i]) for i in self.internal)

    def check_dropped(self, shape: Sequence[int], path: str) -> None:
        for axis in range(5):
            if axis not in self.internal and shape[axis] != 1:
                raise UnetslError(f"{path}: axes {self.axes!r} cannot hold size {shape[axis]} "
                                  f"along {AXES[axis]}")

    def to_file(self, key: Sequence[slice], block: np.ndarray) -> tuple[tuple, np.ndarray]:
        """(file key, file block) of an internal 5-D ``key`` of slices and 5-D ``block``."""
        dropped = tuple(a for a in range(5) if a not in self.internal)
        if dropped:
            block = block.reshape([n for a, n in enumerate(block.shape) if a not in dropped])
        kept = [a for a in range(5) if a in self.internal]
        order = [kept.index(a) for a in self.internal]
        if order != sorted(order):
            block = block.transpose(order)
        return tuple(key[a] for a in self.internal), block


_PIECE_BYTES = 32 * 2**20


def _write_block(array: Any, layout: Any, shape: tuple[int, ...], dtype: np.dtype, key: tuple,
                 block: np.ndarray) -> None:
    """Write a 5-D internal (t, c, z, y, x) block at 5-D slices ``key`` into a zarr array
    stored in ``layout``'s axes (shared by the sink and its picklable Dask twin)."""
    key = tuple(key) + (slice(None),) * (5 - len(key))
    full = tuple(slice(*k.indices(n)[:2]) for k, n in zip(key, shape))
    file_key, file_block = layout.to_file(full, np.asarray(block, dtype=dtype))
    _write_pieces(array, file_key, file_block)


def _write_pieces(array: Any, key: tuple, block: np.ndarray) -> None:
    """``array[key] = block`` in pieces of whole chunks along the last axis, so that zarr
    (which encodes all chunks of one call at once) holds at most ~32 MB of them in memory."""
    if block.nbytes <= _PIECE_BYTES or block.ndim == 0:
        array[key] = block
        return
    chunk = int(array.chunks[-1])
    start, stop = key[-1].start, key[-1].stop
    per = max(1, _PIECE_BYTES // max(block.nbytes // max(block.shape[-1], 1), 1))
    step = max(chunk, per // chunk * chunk)
    edge = start  # pieces start on chunk borders after the first
    while edge < stop:
        end = min(stop, (edge // chunk + 1) * chunk if edge % chunk else edge + step)
        end = min(stop, max(end, edge + 1))
        array[(*key[:-1], slice(edge, end))] = block[..., edge - start:end - start]
        edge = end


class ZarrTarget:
    """A zarr array seen as internal (t, c, z, y, x): ``target[key] = block`` writes through.

    What ``dask.array.store`` needs: picklable (path and layout; each worker opens the
    array itself) and ``__setitem__`` with 5-D slices.
    """

    def __init__(self, path: str, array_path: str, axes: str, time_as_depth: bool,
                 shape: Sequence[int], dtype: Any):
        self.path, self.array_path = str(path), array_path
        self.layout = _Layout(axes, time_as_depth)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.ndim = 5
        self._array = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}

    @property
    def array(self):
        if self._array is None:
            self._array = _zarr().open_array(self.path, path=self.array_path, mode="r+")
        return self._array

    def __setitem__(self, key: tuple, block: np.ndarray) -> None:
        _write_block(self.array, self.layout, self.shape, self.dtype, key, block)

    def write(self, t: int, region: tuple[slice, slice, slice], block: np.ndarray) -> None:
        """The sink interface: ``block`` (c, z, y, x) at time point ``t``, (zs, ys, xs)."""
        self[(slice(t, t + 1), slice(None), *region)] = np.asarray(block)[None]

    def parallel(self) -> ZarrTarget:
        return self


class OutputOmeZarr:
    """An OME-Zarr image on disk, filled block by block; the prediction sink for zarr output.

    shape : (t, c, z, y, x) of the arrays written (internal layout; with ``time_as_depth``
        z holds frames and goes back to t in the file). axes : the file's axes (default
        ``output_axes``). chunks : internal (t, c, z, y, x) chunk shape (default
        ``default_chunks``). spacing, unit : pixel size (z, y, x). levels : resolution
        levels written (1 = full resolution only). version : NGFF "0.4" (zarr v2) or "0.5"
        (zarr v3). labels : mark the image as a label image (napari opens a Labels layer)
        and downsample by nearest neighbour. compress : Blosc/zstd chunks (default) or raw.
        frame_interval : seconds between frames, the scale of the t axis (unit "second").

    ``write`` follows ``unetsl.predict.engine``'s sink interface. Writes that cover whole rows of
    chunks go straight to the store; the predictor's thinner rows are gathered in a buffer
    of one chunk row (up to 256 MB) so that every chunk is compressed once.
    """

    def __init__(self, path: str | os.PathLike, shape: Sequence[int], dtype: Any, *,
                 axes: str | None = None, chunks: Sequence[int] | None = None,
                 spacing: Sequence[float] = (1.0, 1.0, 1.0), unit: str = "pixel",
                 time_as_depth: bool = False, levels: int = 1, version: str = "0.4",
                 labels: bool = False, name: str | None = None, compress: bool = True,
                 frame_interval: float | None = None):
        zarr = _zarr()
        self.path = os.fspath(path)
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) != 5 or min(self.shape) < 1:
            raise UnetslError(f"{self.path}: expected a (t, c, z, y, x) shape, got {shape}")
        self.dtype = np.dtype(dtype)
        if version not in NGFF_VERSIONS:
            raise UnetslError(f"{self.path}: OME-Zarr version must be one of "
                              f"{', '.join(NGFF_VERSIONS)}, got {version!r}")
        if not isinstance(levels, int) or levels < 1:
            raise UnetslError(f"{self.path}: resolution levels must be an integer >= 1, "
                              f"got {levels!r}")
        spacing = tuple(float(s) for s in spacing)
        if len(spacing) != 3 or min(spacing) <= 0:
            raise UnetslError(f"{self.path}: pixel size must be 3 positive numbers (z, y, x), "
                              f"got {spacing}")
        self.version, self.levels, self.labels = version, levels, labels
        self.compress = compress
        self.spacing, self.unit, self.time_as_depth = spacing, unit, time_as_depth
        self.frame_interval = check_interval(frame_interval, self.path)
        self.axes = (axes or output_axes(None, self.shape, time_as_depth)).lower()
        self.layout = _Layout(self.axes, time_as_depth)
        if set(self.axes) - set(AXES) or [a for a in AXES if a in self.axes] != list(self.axes) \
                or not {"y", "x"} <= set(self.axes):
            raise UnetslError(f"{self.path}: OME-Zarr axes must be y, x and any of t, c, z in "
                              f"the order t, c, z, y, x; got {self.axes!r}")
        self.layout.check_dropped(self.shape, self.path)
        chunks = tuple(int(c) for c in (chunks or default_chunks(self.shape, self.dtype)))
        if len(chunks) != 5 or min(chunks) < 1:
            raise UnetslError(f"{self.path}: chunks must be 5 integers >= 1 (t, c, z, y, x), "
                              f"got {chunks}")
        self.chunks = tuple(min(c, n) for c, n in zip(chunks, self.shape))
        self.name = name or Path(self.path).name.split(".")[0] or "image"
        try:
            from ome_zarr.format import format_from_version
        except ImportError:
            raise UnetslError(f"{self.path}: writing OME-Zarr needs the ome-zarr package "
                              "(Python 3.11 or later)") from None
        self.format = format_from_version(version)  # zarr format, chunk keys, metadata
        try:
            self.group = zarr.open_group(self.path, mode="w",
                                         zarr_format=self.format.zarr_format)
            self.array = self._create_level(0, self.shape)
        except UnetslError:
            raise
        except Exception as exc:
            raise UnetslError(f"{self.path}: cannot create zarr ({_one_line(exc)})") from exc
        self._write_metadata(1)
        self._buffer: ChunkRowBuffer | None = None
        self.client = None  # a distributed Client: close() builds the levels with it

    # ------------------------------------------------------------------ arrays, metadata
    def _level_shape(self, level: int) -> tuple[int, ...]:
        t, c, z, y, x = self.shape
        f = 2 ** level
        return (t, c, z, -(-y // f), -(-x // f))

    def _create_level(self, level: int, shape: tuple[int, ...]) -> Any:
        """The zarr array of resolution ``level``: our chunks, fill value and compression
        (Blosc/zstd), the format's chunk keys ("/" also for zarr v2), and, in zarr v3, the
        axes as dimension names."""
        extra: dict[str, Any] = {}
        if self.format.zarr_format == 3:
            extra["dimension_names"] = list(self.axes)
        chunks = tuple(min(c, n) for c, n in zip(self.chunks, shape))
        return self.group.create_array(
            str(level), shape=self.layout.file_shape(shape), dtype=self.dtype,
            chunks=self.layout.file_shape(chunks), fill_value=0,
            chunk_key_encoding=self.format.chunk_key_encoding,
            compressors=_compressors(self.version, self.dtype, self.compress), **extra)

    def _write_metadata(self, levels: int) -> None:
        """The NGFF metadata of ``levels`` levels, written by ome-zarr (rewritten as each
        level is added, so that a store always lists the levels it holds)."""
        from ome_zarr.writer import add_metadata, get_metadata, write_multiscales_metadata

        sizes = {**dict(zip("zyx", self.spacing)), "t": self.frame_interval or 1.0, "c": 1.0}
        datasets = [{"path": str(level), "coordinateTransformations": [{
            "type": "scale",
            "scale": [sizes[a] * (2 ** level if a in "yx" else 1) for a in self.axes]}]}
            for level in range(levels)]
        write_multiscales_metadata(
            self.group, datasets, fmt=self.format, axes=list(self.axes), name=self.name,
            axes_units=self._axes_units(),
            metadata={"method": "unetsl.io.omezarr downsample_2x",
                      "version": _unetsl_version()})
        # what write_multiscales_metadata has no argument for: the downsampling "type",
        # and the image-label mark (write_label_metadata wants the label image inside an
        # image's "labels" group; ours stand alone, as napari opens them)
        multiscales = get_metadata(self.group)["multiscales"]
        multiscales[0]["type"] = "nearest" if self._nearest() else "mean"
        extra: dict[str, Any] = {"multiscales": multiscales}
        if self.labels:
            extra["image-label"] = {"version": self.version} if self.version == "0.4" else {}
        add_metadata(self.group, extra, fmt=self.format)

    def _axes_units(self) -> dict[str, str] | None:
        """NGFF units of the axes: the spatial unit on z, y, x and, when the frame interval
        is known, "second" on t (so viewers show the movie's timing)."""
        unit = ngff_unit(self.unit)
        units = {a: unit for a in self.axes if a in "zyx"} if unit else {}
        if self.frame_interval is not None and "t" in self.axes:
            units["t"] = NGFF_TIME_UNIT
        return units or None

    # ---------------------------------------------------------------------------- writes
    def __setitem__(self, key: tuple, block: np.ndarray) -> None:
        """Write a 5-D internal block at 5-D slices ``key`` (bypasses the row buffer)."""
        _write_block(self.array, self.layout, self.shape, self.dtype, key, block)

    def write(self, t: int, region: tuple[slice, slice, slice], block: np.ndarray) -> None:
        """Write ``block`` (c, z, y, x) at time point ``t`` and (zs, ys, xs) of the internal
        layout (the sink interface of ``unetsl.predict.engine``)."""
        block = np.asarray(block)
        spans = [slice(*r.indices(n)[:2]) for r, n in zip(region, self.shape[2:])]
        if self._buffer is not None and not self._buffer.accepts(t, spans, block):
            self._flush()
        if self._buffer is None:
            self._buffer = ChunkRowBuffer.start(self, t, spans, block)
        if self._buffer is None:
            self[(slice(t, t + 1), slice(None), *spans)] = block[None]
            return
        for done in self._buffer.add(spans, block):
            self[done[0]] = done[1]

    def _flush(self) -> None:
        if self._buffer is not None:
            for key, data in self._buffer.drain():
                self[key] = data
            self._buffer = None

    def target(self) -> ZarrTarget:
        """A picklable handle for parallel writers (Dask tasks) of level 0."""
        self._flush()
        return ZarrTarget(self.path, "0", self.axes, self.time_as_depth, self.shape, self.dtype)

    parallel = target  # what unetsl.predict.dask_blocks asks a sink for workers to write themselves

    def close(self) -> None:
        """Write what is buffered and build the lower-resolution levels."""
        self._flush()
        if self.levels > 1:
            self.build_levels(client=self.client)

    def build_levels(self, *, client: Any = None) -> None:
        """Levels 1..levels-1, each 2x smaller in y and x than the one before.

        Computed chunk row by chunk row from the level above (memory: one row of chunks),
        or as Dask tasks when ``client`` (a distributed Client) is given.
        """
        previous = self.array
        for level in range(1, self.levels):
            shape = self._level_shape(level)
            if min(shape[3:]) < 1:
                break
            array = self._create_level(level, shape)
            _downsample_into(previous, array, self.axes, nearest=self._nearest(),
                             client=client, path=self.path, level=level)
            previous = array
            self._write_metadata(level + 1)

    def _nearest(self) -> bool:
        return self.labels or self.dtype.kind in "iub"

    def __enter__(self) -> OutputOmeZarr:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()


def _unetsl_version() -> str:
    try:
        from importlib.metadata import version

        return version("unetsl")
    except Exception:  # pragma: no cover - not installed
        return "unknown"


# ------------------------------------------------------------------------------ convenience


def write_ome_zarr(path: str | os.PathLike, data: Any, *, axes: str | None = None,
                   chunks: Sequence[int] | None = None,
                   spacing: Sequence[float] = (1.0, 1.0, 1.0), unit: str = "pixel",
                   time_as_depth: bool = False, levels: int = 1, version: str = "0.4",
                   labels: bool = False, name: str | None = None, compress: bool = True,
                   frame_interval: float | None = None) -> Path:
    """Write a whole (t, c, z, y, x) array (NumPy, or Dask: stored chunk by chunk) as
    OME-Zarr, atomically (``frame_interval``: seconds between frames). Returns the path."""
    target = Path(os.fspath(path))
    shape = tuple(int(s) for s in data.shape)
    if len(shape) != 5:
        raise UnetslError(f"{target}: expected a (t, c, z, y, x) array, got shape {shape}")
    with atomic_dir(target) as tmp:
        out = OutputOmeZarr(tmp, shape, data.dtype, axes=axes, chunks=chunks, spacing=spacing,
                            unit=unit, time_as_depth=time_as_depth, levels=levels,
                            version=version, labels=labels,
                            name=name or target.name.split(".")[0], compress=compress,
                            frame_interval=frame_interval)
        if hasattr(data, "dask"):
            import dask.array as da

            data = data.rechunk(out.chunks)
            da.store(data, out.target(), lock=False)
        else:
            step = out.chunks
            for t in range(shape[0]):
                for z0 in range(0, shape[2], step[2]):
                    key = (slice(t, t + 1), slice(None), slice(z0, z0 + step[2]))
                    out[key] = np.asarray(data[key])
        out.close()
    return target


def estimate_bytes(shape: Sequence[int], dtype: Any) -> int:
    """Uncompressed size of an array (for messages and benchmarks)."""
    return int(math.prod(int(s) for s in shape) * np.dtype(dtype).itemsize)
