"""zarr and OME-Zarr images in and out, read and written chunk by chunk.

Why: light-sheet and EM volumes of hundreds of GB live in chunked, compressed stores
(OME-Zarr, the NGFF format napari, Fiji/MoBIE and neuroglancer read). unetsl reads them
lazily as the (t, c, z, y, x) arrays used everywhere else, and writes predictions back as
OME-Zarr with the input's axes, chunks and pixel size, so that image and prediction overlay
in napari.

Reading (``open_zarr``): an OME-Zarr group (NGFF 0.4 with zarr v2, or 0.5 with zarr v3; a
bioformats2raw layout is followed to its first image), or a plain zarr array whose axes come
from its dimension names (zarr v3 ``dimension_names`` or xarray's ``_ARRAY_DIMENSIONS``)
or, failing that, from its rank (yx, zyx, czyx, tczyx, as for .npy files). Nothing is read
until a block is asked for.

Writing (``OutputOmeZarr``): an OME-Zarr image whose level 0 is filled block by block
(``write(t, (zs, ys, xs), block)``, the sink interface of ``unetsl.predict``), or in parallel
by Dask tasks (``ZarrTarget``); ``close`` adds the optional lower-resolution levels (2x in y
and x per level: nearest neighbour for labels, the mean for intensities). NGFF 0.4 (zarr v2,
"/" chunk keys) is the default because every viewer reads it; 0.5 (zarr v3) on request.

Axes: internally always (t, c, z, y, x); the file keeps only the axes the input had (plus c
when there are several channels), in NGFF order. ``time_as_depth`` (a 2D time series read
with frames as z, the original's rule) puts the frames back on the t axis.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unetsl.errors import UnetslError

__all__ = [
    "NGFF_VERSIONS",
    "OutputOmeZarr",
    "ZarrImage",
    "ZarrTarget",
    "ZarrView",
    "atomic_dir",
    "default_chunks",
    "is_zarr_path",
    "ngff_unit",
    "open_zarr",
    "output_axes",
    "read_zarr",
    "unetsl_unit",
    "write_ome_zarr",
]

AXES = "tczyx"
NGFF_VERSIONS = ("0.4", "0.5")
_AXIS_TYPE = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
_RANK_AXES = {2: "yx", 3: "zyx", 4: "czyx", 5: "tczyx"}
# unetsl / ImageJ unit spellings -> NGFF (UDUNITS-2) names, and back
_TO_NGFF = {"µm": "micrometer", "um": "micrometer", "micron": "micrometer",
            "microns": "micrometer", "micrometer": "micrometer", "micrometre": "micrometer",
            "nm": "nanometer", "nanometer": "nanometer", "mm": "millimeter",
            "millimeter": "millimeter", "cm": "centimeter", "m": "meter", "meter": "meter",
            "pm": "picometer", "Å": "angstrom", "angstrom": "angstrom"}
_FROM_NGFF = {"micrometer": "µm", "nanometer": "nm", "millimeter": "mm", "centimeter": "cm",
              "meter": "m", "picometer": "pm", "angstrom": "Å"}
_ZARR_SUFFIXES = (".zarr", ".ome.zarr")
_BUFFER_LIMIT = 256 * 2**20  # bytes a sink may hold to make its writes chunk-aligned


def _zarr():
    try:
        import zarr
    except ImportError:  # zarr 3 needs Python 3.11
        raise UnetslError("zarr and OME-Zarr need the zarr package (pip install "
                          '"unetsl[scale]")') from None
    return zarr


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def ngff_unit(unit: str | None) -> str | None:
    """The NGFF name of a unetsl unit ("µm" -> "micrometer"); None for pixels/unknown."""
    if not unit or unit == "pixel":
        return None
    return _TO_NGFF.get(unit, _TO_NGFF.get(unit.lower()))


def unetsl_unit(unit: str | None) -> str:
    """The unetsl spelling of an NGFF unit ("micrometer" -> "µm"); "pixel" when absent."""
    if not unit:
        return "pixel"
    return _FROM_NGFF.get(unit, unit)


def is_zarr_path(path: str | os.PathLike) -> bool:
    """A path that names a zarr store: ``*.zarr`` / ``*.ome.zarr``, or a folder with zarr
    metadata (so that an existing store is recognised whatever its name)."""
    p = Path(os.fspath(path).rstrip("/"))
    if p.name.lower().endswith(_ZARR_SUFFIXES):
        return True
    return p.is_dir() and any((p / m).exists() for m in ("zarr.json", ".zarray", ".zgroup"))


# ----------------------------------------------------------------------------------- reading


class ZarrView:
    """A (t, c, z, y, x) view of a zarr array whose axes are named by ``axes`` letters.

    Axes the array lacks have size 1. ``swap_tz`` exchanges t and z (2D time series read
    with frames as depth). Supports ``shape``, ``dtype``, ``ndim``, ``chunks`` (t, c, z, y, x),
    basic indexing with integers and step-1 slices (so ``dask.array.from_array`` works on
    it), and ``read(t, zs, ys, xs) -> (c, z, y, x)``, the source interface of
    ``unetsl.predict``. Pickles as the store's path, so Dask workers reopen it themselves.
    """

    def __init__(self, array: Any, axes: str, swap_tz: bool = False, path: str | None = None,
                 array_path: str | None = None):
        axes = axes.lower()
        if len(axes) != len(array.shape) or len(set(axes)) != len(axes) \
                or set(axes) - set(AXES) or not {"y", "x"} <= set(axes):
            raise UnetslError(f"{path or 'zarr array'}: axes {axes!r} of shape "
                              f"{tuple(array.shape)} cannot be read as (t, c, z, y, x)")
        self.array = array
        self.axes = axes
        self.swap_tz = swap_tz
        self.path, self.array_path = path, array_path
        # internal axis (0..4) of every file axis
        where = {a: i for i, a in enumerate(AXES)}
        if swap_tz:
            where["t"], where["z"] = 2, 0
        self._internal = [where[a] for a in axes]
        shape, chunks = [1] * 5, [1] * 5
        array_chunks = getattr(array, "chunks", array.shape)
        for axis, n, c in zip(self._internal, array.shape, array_chunks, strict=True):
            shape[axis], chunks[axis] = int(n), int(c)
        self.shape = tuple(shape)
        self.chunks = tuple(chunks)
        self.dtype = np.dtype(array.dtype)
        self.ndim = 5

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if self.path is not None:
            state["array"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.array is None:
            node = _zarr().open(self.path, mode="r")
            self.array = node[self.array_path] if self.array_path else node

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            i = next(i for i, k in enumerate(key) if k is Ellipsis)
            key = key[:i] + (slice(None),) * (5 - len(key) + 1) + key[i + 1:]
        key = key + (slice(None),) * (5 - len(key))
        if len(key) != 5:
            raise IndexError(f"too many indices for a (t, c, z, y, x) view: {key}")
        file_key, kept = [], []
        for axis in self._internal:
            k = key[axis]
            file_key.append(k)
            if isinstance(k, slice):
                kept.append(axis)
        block = np.asarray(self.array[tuple(file_key)])
        # axes the file lacks: size 1, indexable by 0 or by a slice
        names = list(kept)
        for axis in range(5):
            if axis in self._internal:
                continue
            k = key[axis]
            if isinstance(k, slice):
                n = len(range(*k.indices(1)))
                block = block.reshape(block.shape + (1,))
                if n == 0:
                    block = block[..., :0]
                names.append(axis)
            elif int(k) not in (0, -1):
                raise IndexError(f"index {k} out of range for axis {AXES[axis]} of size 1")
        order = sorted(range(len(names)), key=lambda i: names[i])
        return block.transpose(order) if order != list(range(len(order))) else block

    def read(self, t: int, zs: slice, ys: slice, xs: slice) -> np.ndarray:
        """(c, z, y, x) block of time point ``t``."""
        return self[t, :, zs, ys, xs]

    def to_dask(self, chunks: Sequence[int] | None = None):
        """This view as a dask array, one task per zarr chunk (or per ``chunks``)."""
        import dask.array as da

        return da.from_array(self, chunks=tuple(chunks or self.chunks), asarray=False,
                             fancy=False, meta=np.empty((0,) * 5, dtype=self.dtype))


@dataclass
class ZarrImage:
    """A zarr or OME-Zarr image opened for block reads (the lazy twin of ``io.Image``).

    data : ``ZarrView``, (t, c, z, y, x). axes : the file's axes, e.g. "zyx" or "tczyx".
    spacing : pixel size (z, y, x) in ``unit``. levels : number of resolution levels.
    """

    data: ZarrView
    axes: str
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    unit: str = "pixel"
    time_as_depth: bool = False
    path: str | None = None
    levels: int = 1
    version: str | None = None  # the NGFF version, None for a plain zarr array
    name: str | None = None
    attrs: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        return self.data.shape

    @property
    def chunks(self) -> tuple[int, int, int, int, int]:
        return self.data.chunks


def _multiscales(attrs: dict) -> tuple[list | None, str | None]:
    """(multiscales, version) of OME-Zarr 0.5 (under "ome") or <= 0.4 group attributes."""
    ome = attrs.get("ome")
    if isinstance(ome, dict) and ome.get("multiscales"):
        return ome["multiscales"], str(ome.get("version", "0.5"))
    multiscales = attrs.get("multiscales")
    if multiscales:
        return multiscales, str(multiscales[0].get("version", "0.4"))
    return None, None


def _scale_of(transforms: Sequence[dict] | None, n: int) -> list[float]:
    scale = [1.0] * n
    for transform in transforms or []:
        if transform.get("type") == "scale" and len(transform.get("scale", [])) == n:
            scale = [s * float(v) for s, v in zip(scale, transform["scale"])]
    return scale


def _dimension_names(array: Any) -> str | None:
    names = None
    metadata = getattr(array, "metadata", None)
    if getattr(metadata, "dimension_names", None):
        names = list(metadata.dimension_names)
    elif "_ARRAY_DIMENSIONS" in getattr(array, "attrs", {}):
        names = list(array.attrs["_ARRAY_DIMENSIONS"])
    if not names or any(n is None for n in names):
        return None
    letters = "".join(str(n)[:1].lower() for n in names)
    if len(set(letters)) == len(letters) and not set(letters) - set(AXES) \
            and all(len(str(n)) == 1 or str(n).lower() in ("time", "channel") for n in names):
        return letters
    return None


def open_zarr(path: str | os.PathLike, *, depth_wanted: int = 1, level: int = 0) -> ZarrImage:
    """Open a zarr array or OME-Zarr image for block reads as (t, c, z, y, x).

    depth_wanted : the z size of the model's patch; a 2D time series (t > 1, z == 1) is then
        read with frames as z, as ``unetsl.io.read_image`` does.
    level : resolution level of a multiscale image (0 = full resolution).
    """
    zarr = _zarr()
    name = os.fspath(path)
    if not Path(name).exists():
        raise UnetslError(f"{name}: no such zarr folder")
    try:
        node = zarr.open(name, mode="r")
    except Exception as exc:
        raise UnetslError(f"{name}: not a zarr array or OME-Zarr image "
                          f"({_one_line(exc)})") from exc
    spacing, unit, version, levels, label = [1.0, 1.0, 1.0], "pixel", None, 1, None
    array_path = None
    attrs: dict = {}
    if isinstance(node, zarr.Group):
        attrs = node.attrs.asdict()
        multiscales, version = _multiscales(attrs)
        if multiscales is None and ("bioformats2raw.layout" in attrs
                                    or "bioformats2raw.layout" in attrs.get("ome", {})) \
                and "0" in node:
            node, array_path = node["0"], "0/"
            attrs = node.attrs.asdict()
            multiscales, version = _multiscales(attrs)
        if multiscales is None:
            raise UnetslError(f"{name}: zarr group without OME-Zarr \"multiscales\" metadata; "
                              "give the path of an image or array inside it")
        first = multiscales[0]
        datasets = first.get("datasets") or []
        if not datasets:
            raise UnetslError(f"{name}: OME-Zarr \"multiscales\" lists no datasets")
        if not 0 <= level < len(datasets):
            raise UnetslError(f"{name}: resolution level {level} does not exist "
                              f"(levels 0..{len(datasets) - 1})")
        levels = len(datasets)
        dataset_path = str(datasets[level]["path"])
        try:
            array = node[dataset_path]
        except KeyError:
            raise UnetslError(f"{name}: OME-Zarr dataset {dataset_path!r} is missing") from None
        array_path = (array_path or "") + dataset_path
        axes_meta = first.get("axes")
        if axes_meta:
            letters = "".join((a["name"] if isinstance(a, dict) else str(a))[:1].lower()
                              for a in axes_meta)
        else:  # NGFF <= 0.3: always tczyx
            letters = _RANK_AXES.get(len(array.shape), "")
        scale = _scale_of(datasets[level].get("coordinateTransformations"), len(letters))
        top = _scale_of(first.get("coordinateTransformations"), len(letters))
        scale = [s * g for s, g in zip(scale, top)]
        for i, letter in enumerate(letters):
            if letter in "zyx" and scale[i] > 0:
                spacing["zyx".index(letter)] = float(scale[i])
        units = {(a.get("name", "") or "")[:1].lower(): a.get("unit")
                 for a in axes_meta or [] if isinstance(a, dict)}
        unit = unetsl_unit(units.get("x") or units.get("y"))
        label = first.get("name")
    else:
        array = node
        letters = _dimension_names(array) or _RANK_AXES.get(len(array.shape))
        if letters is None:
            raise UnetslError(f"{name}: zarr array of shape {tuple(array.shape)}; expected 2 to "
                              "5 dims (yx, zyx, czyx or tczyx) or named dimensions")
    view = ZarrView(array, letters, path=name, array_path=array_path)
    t, _, z = view.shape[:3]
    swap = depth_wanted > 1 and t > 1 and z == 1
    if swap:
        view = ZarrView(array, letters, swap_tz=True, path=name, array_path=array_path)
    return ZarrImage(view, letters, tuple(spacing), unit, swap, name, levels, version,
                     label, attrs)


def read_zarr(path: str | os.PathLike, *, depth_wanted: int = 1, level: int = 0):
    """Read a whole zarr / OME-Zarr image into memory as a ``unetsl.io.Image``."""
    from unetsl.io import Image

    image = open_zarr(path, depth_wanted=depth_wanted, level=level)
    return Image(image.data[:, :, :, :, :], image.spacing, image.unit, image.time_as_depth,
                 image.path)


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
        from numcodecs import Blosc

        return Blosc(cname="zstd", clevel=3, shuffle=Blosc.BITSHUFFLE if dtype.itemsize == 1
                     else Blosc.SHUFFLE)
    from zarr.codecs import BloscCodec

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
        key = tuple(key) + (slice(None),) * (5 - len(key))
        full = tuple(slice(*k.indices(n)[:2]) for k, n in zip(key, self.shape))
        file_key, file_block = self.layout.to_file(full, np.asarray(block, dtype=self.dtype))
        _write_pieces(self.array, file_key, file_block)

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

    ``write`` follows ``unetsl.predict``'s sink interface. Writes that cover whole rows of
    chunks go straight to the store; the predictor's thinner rows are gathered in a buffer
    of one chunk row (up to 256 MB) so that every chunk is compressed once.
    """

    def __init__(self, path: str | os.PathLike, shape: Sequence[int], dtype: Any, *,
                 axes: str | None = None, chunks: Sequence[int] | None = None,
                 spacing: Sequence[float] = (1.0, 1.0, 1.0), unit: str = "pixel",
                 time_as_depth: bool = False, levels: int = 1, version: str = "0.4",
                 labels: bool = False, name: str | None = None, compress: bool = True):
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
        zarr_format = 2 if version == "0.4" else 3
        try:
            self.group = zarr.open_group(self.path, mode="w", zarr_format=zarr_format)
            extra: dict[str, Any] = {}
            if zarr_format == 2:
                extra["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
            else:
                extra["dimension_names"] = list(self.axes)
            self.array = self.group.create_array(
                "0", shape=self.layout.file_shape(self.shape), dtype=self.dtype,
                chunks=self.layout.file_shape(self.chunks), fill_value=0,
                compressors=_compressors(version, self.dtype, compress), **extra)
        except UnetslError:
            raise
        except Exception as exc:
            raise UnetslError(f"{self.path}: cannot create zarr ({_one_line(exc)})") from exc
        self._write_metadata(1)
        self._buffer: _RowBuffer | None = None
        self.client = None  # a distributed Client: close() builds the levels with it

    # ------------------------------------------------------------------------- metadata
    def _level_shape(self, level: int) -> tuple[int, ...]:
        t, c, z, y, x = self.shape
        f = 2 ** level
        return (t, c, z, -(-y // f), -(-x // f))

    def _write_metadata(self, levels: int) -> None:
        axes = []
        for a in self.axes:
            entry: dict[str, Any] = {"name": a, "type": _AXIS_TYPE[a]}
            unit = ngff_unit(self.unit) if a in "zyx" else None
            if unit:
                entry["unit"] = unit
            axes.append(entry)
        sizes = dict(zip("zyx", self.spacing))
        datasets = []
        for level in range(levels):
            scale = [sizes[a] * (2 ** level if a in "yx" else 1) if a in "zyx" else 1.0
                     for a in self.axes]
            datasets.append({"path": str(level),
                             "coordinateTransformations": [{"type": "scale", "scale": scale}]})
        multiscale: dict[str, Any] = {"axes": axes, "datasets": datasets, "name": self.name,
                                      "type": "nearest" if self.labels else "mean",
                                      "metadata": {"method": "unetsl.zarr_io downsample_2x",
                                                   "version": _unetsl_version()}}
        if self.version == "0.4":
            multiscale = {"version": "0.4", **multiscale}
            attrs: dict[str, Any] = {"multiscales": [multiscale]}
            if self.labels:
                attrs["image-label"] = {"version": "0.4"}
        else:
            ome: dict[str, Any] = {"version": "0.5", "multiscales": [multiscale]}
            if self.labels:
                ome["image-label"] = {}
            attrs = {"ome": ome}
        self.group.attrs.update(attrs)

    # ---------------------------------------------------------------------------- writes
    def __setitem__(self, key: tuple, block: np.ndarray) -> None:
        """Write a 5-D internal block at 5-D slices ``key`` (bypasses the row buffer)."""
        key = tuple(key) + (slice(None),) * (5 - len(key))
        full = tuple(slice(*k.indices(n)[:2]) for k, n in zip(key, self.shape))
        file_key, file_block = self.layout.to_file(full, np.asarray(block, dtype=self.dtype))
        _write_pieces(self.array, file_key, file_block)

    def write(self, t: int, region: tuple[slice, slice, slice], block: np.ndarray) -> None:
        """Write ``block`` (c, z, y, x) at time point ``t`` and (zs, ys, xs) of the internal
        layout (the sink interface of ``unetsl.predict``)."""
        block = np.asarray(block)
        spans = [slice(*r.indices(n)[:2]) for r, n in zip(region, self.shape[2:])]
        if self._buffer is not None and not self._buffer.accepts(t, spans, block):
            self._flush()
        if self._buffer is None:
            self._buffer = _RowBuffer.start(self, t, spans, block)
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

    parallel = target  # what unetsl.distributed asks a sink for workers to write themselves

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
            extra: dict[str, Any] = {}
            if self.version == "0.4":
                extra["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
            else:
                extra["dimension_names"] = list(self.axes)
            chunks = tuple(min(c, n) for c, n in zip(self.chunks, shape))
            array = self.group.create_array(
                str(level), shape=self.layout.file_shape(shape), dtype=self.dtype,
                chunks=self.layout.file_shape(chunks), fill_value=0,
                compressors=_compressors(self.version, self.dtype, self.compress), **extra)
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


class _RowBuffer:
    """One chunk row along the axis a predictor streams over (z or y), full in the others.

    The prediction engine hands over rows of tiles in order along one axis, each covering
    the whole extent of the others; rows rarely end on chunk borders. This gathers them
    until whole chunk rows are complete, so every chunk is written (and compressed) once.
    """

    def __init__(self, sink: OutputOmeZarr, t: int, axis: int, lo: int):
        self.sink, self.t, self.axis = sink, t, axis  # axis: 0 = z, 1 = y (of z, y, x)
        chunk = sink.chunks[2 + axis]
        self.chunk_lo = lo // chunk * chunk
        self.filled = lo  # everything in [chunk_lo, filled) has been given
        self.chunk = chunk
        shape = [sink.shape[1], *sink.shape[2:]]
        shape[1 + axis] = chunk
        self.data = np.zeros(shape, dtype=sink.dtype)

    @staticmethod
    def start(sink: OutputOmeZarr, t: int, spans: list[slice], block: np.ndarray
              ) -> _RowBuffer | None:
        full = [s.start == 0 and s.stop == n for s, n in zip(spans, sink.shape[2:])]
        if block.shape[0] != sink.shape[1] or not full[2]:
            return None
        if not full[1]:
            axis = 1 if full[0] else None
        else:
            axis = 0 if not full[0] else None
        if axis is None:
            return None
        if spans[axis].start % sink.chunks[2 + axis] != 0:
            return None
        buffer = _RowBuffer(sink, t, axis, spans[axis].start)
        if buffer.data.nbytes > _BUFFER_LIMIT:
            return None
        return buffer

    def accepts(self, t: int, spans: list[slice], block: np.ndarray) -> bool:
        if t != self.t or block.shape[0] != self.sink.shape[1]:
            return False
        for a, (s, n) in enumerate(zip(spans, self.sink.shape[2:])):
            if a == self.axis:
                if s.start != self.filled:
                    return False
            elif s.start != 0 or s.stop != n:
                return False
        return True

    def _key(self, lo: int, hi: int) -> tuple:
        key = [slice(self.t, self.t + 1), slice(None), slice(None), slice(None), slice(None)]
        key[2 + self.axis] = slice(lo, hi)
        return tuple(key)

    def add(self, spans: list[slice], block: np.ndarray) -> Iterator[tuple[tuple, np.ndarray]]:
        """Copy ``block`` in; yield (key, data) of every chunk row completed."""
        a = 1 + self.axis
        start, stop = spans[self.axis].start, spans[self.axis].stop
        size = self.sink.shape[2 + self.axis]
        pos = start
        while pos < stop:
            row_end = min(self.chunk_lo + self.chunk, size)
            take = min(stop, row_end) - pos
            dst = [slice(None)] * 4
            src = [slice(None)] * 4
            dst[a] = slice(pos - self.chunk_lo, pos - self.chunk_lo + take)
            src[a] = slice(pos - start, pos - start + take)
            self.data[tuple(dst)] = block[tuple(src)]
            pos += take
            self.filled = pos
            if pos == row_end:
                depth = row_end - self.chunk_lo
                cut = [slice(None)] * 4
                cut[a] = slice(0, depth)
                # a view: the caller writes it before this generator resumes
                yield self._key(self.chunk_lo, row_end), self.data[tuple(cut)][None]
                self.chunk_lo = row_end
                self.data.fill(0)

    def drain(self) -> Iterator[tuple[tuple, np.ndarray]]:
        """What is left (a partial chunk row): written as is, zarr merges it."""
        depth = self.filled - self.chunk_lo
        if depth > 0:
            cut = [slice(None)] * 4
            cut[1 + self.axis] = slice(0, depth)
            yield self._key(self.chunk_lo, self.filled), self.data[tuple(cut)][None]


# ------------------------------------------------------------------------- multiscale levels


def downsample_2x(block: np.ndarray, axes: str, *, nearest: bool) -> np.ndarray:
    """Halve y and x of a block with file ``axes``: every other voxel (labels) or the mean
    of 2 x 2 voxels (odd edges: the mean of what is there)."""
    iy, ix = axes.index("y"), axes.index("x")
    if nearest:
        key = [slice(None)] * block.ndim
        key[iy] = slice(0, None, 2)
        key[ix] = slice(0, None, 2)
        return np.ascontiguousarray(block[tuple(key)])
    data = block.astype(np.float64)
    pads = [(0, 0)] * block.ndim
    pads[iy] = (0, block.shape[iy] % 2)
    pads[ix] = (0, block.shape[ix] % 2)
    if any(p != (0, 0) for p in pads):
        data = np.pad(data, pads, mode="edge")
    shape = list(data.shape)
    new = []
    for i, n in enumerate(shape):
        new += [n // 2, 2] if i in (iy, ix) else [n]
    data = data.reshape(new)
    offset_y = iy + (1 if ix < iy else 0)
    data = data.mean(axis=(offset_y + 1, ix + (1 if iy < ix else 0) + 1))
    if np.dtype(block.dtype).kind in "iu":
        data = np.rint(data)
    return data.astype(block.dtype)


def _downsample_region(src_path: str, src_name: str, dst_name: str, axes: str,
                       nearest: bool, key: tuple) -> None:
    """One chunk row of a lower level (a Dask task): read 2x, downsample, write."""
    zarr = _zarr()
    group = zarr.open_group(src_path, mode="r+")
    src, dst = group[src_name], group[dst_name]
    _downsample_key(src, dst, axes, nearest, key)


def _downsample_key(src, dst, axes: str, nearest: bool, key: tuple) -> None:
    iy, ix = axes.index("y"), axes.index("x")
    src_key = list(key)
    for i in (iy, ix):
        src_key[i] = slice(key[i].start * 2, min(key[i].stop * 2, src.shape[i]))
    dst[key] = downsample_2x(np.asarray(src[tuple(src_key)]), axes, nearest=nearest)


def _downsample_into(src, dst, axes: str, *, nearest: bool, client: Any, path: str,
                     level: int) -> None:
    iy = axes.index("y")
    keys = []
    # one task per row of chunks along y (whole x), and per chunk of the axes before y
    lead = [range(0, n, c) for n, c in zip(dst.shape[:iy], dst.chunks[:iy])]
    for origin in _product(lead):
        for y0 in range(0, dst.shape[iy], dst.chunks[iy]):
            key = [slice(o, min(o + c, n)) for o, c, n in zip(origin, dst.chunks, dst.shape)]
            key.append(slice(y0, min(y0 + dst.chunks[iy], dst.shape[iy])))
            key += [slice(0, n) for n in dst.shape[iy + 1:]]
            keys.append(tuple(key))
    if client is None:
        for key in keys:
            _downsample_key(src, dst, axes, nearest, key)
        return
    futures = client.map(_downsample_region, [path] * len(keys), [str(level - 1)] * len(keys),
                         [str(level)] * len(keys), [axes] * len(keys), [nearest] * len(keys),
                         keys, pure=False)
    client.gather(futures)


def _product(ranges: list[range]) -> Iterator[tuple[int, ...]]:
    if not ranges:
        yield ()
        return
    for head in ranges[0]:
        for rest in _product(ranges[1:]):
            yield (head, *rest)


# ------------------------------------------------------------------------------ convenience


def write_ome_zarr(path: str | os.PathLike, data: Any, *, axes: str | None = None,
                   chunks: Sequence[int] | None = None,
                   spacing: Sequence[float] = (1.0, 1.0, 1.0), unit: str = "pixel",
                   time_as_depth: bool = False, levels: int = 1, version: str = "0.4",
                   labels: bool = False, name: str | None = None, compress: bool = True
                   ) -> Path:
    """Write a whole (t, c, z, y, x) array (NumPy, or Dask: stored chunk by chunk) as
    OME-Zarr, atomically. Returns the path."""
    target = Path(os.fspath(path))
    shape = tuple(int(s) for s in data.shape)
    if len(shape) != 5:
        raise UnetslError(f"{target}: expected a (t, c, z, y, x) array, got shape {shape}")
    with atomic_dir(target) as tmp:
        out = OutputOmeZarr(tmp, shape, data.dtype, axes=axes, chunks=chunks, spacing=spacing,
                            unit=unit, time_as_depth=time_as_depth, levels=levels,
                            version=version, labels=labels,
                            name=name or target.name.split(".")[0], compress=compress)
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
