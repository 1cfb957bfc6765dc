"""zarr and OME-Zarr images, read chunk by chunk (writing: io.omezarr_write).

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

What the libraries do and what is ours: the ``multiscales`` metadata of NGFF 0.4 and 0.5
is parsed and validated by ome-zarr-models (the specification's pydantic models), so a
broken store is refused in one line naming the first problem. The rest is ours because the
libraries do not fit: ``ome_zarr.reader`` hands out Dask arrays of every level, while the
prediction engine wants one level as a plain zarr array behind ``ZarrView`` (chunk-by-chunk
reads, t/z swapped for 2D time series, pickled as a path for Dask workers); plain zarr
arrays with dimension names, bioformats2raw folders and NGFF <= 0.3 (no models) are not
OME-Zarr images to the libraries.

Writing (``OutputOmeZarr``): an OME-Zarr image whose level 0 is filled block by block
(``write(t, (zs, ys, xs), block)``, the sink interface of ``unetsl.predict.engine``), or in parallel
by Dask tasks (``ZarrTarget``); ``close`` adds the optional lower-resolution levels (2x in y
and x per level: nearest neighbour for labels and integer images, the mean for floats). NGFF
0.4 (zarr v2, "/" chunk keys) is the default because every viewer reads it; 0.5 (zarr v3) on
request.

Axes: internally always (t, c, z, y, x); the file keeps only the axes the input had (plus c
when there are several channels), in NGFF order. ``time_as_depth`` (a 2D time series read
with frames as z, the original's rule) puts the frames back on the t axis.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unetsl.errors import UnetslError
from unetsl.io.tiff import Image
from unetsl.io.timing import ngff_interval

__all__ = [
    "NGFF_VERSIONS",
    "ZarrImage",
    "ZarrView",
    "is_zarr_path",
    "ngff_unit",
    "open_zarr",
    "read_zarr",
    "unetsl_unit",
]

AXES = "tczyx"
NGFF_VERSIONS = ("0.4", "0.5")  # written; read: these (validated) and 0.1 to 0.3
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
    except ImportError:  # zarr 3 (a dependency from Python 3.11 on) needs Python 3.11
        raise UnetslError("zarr and OME-Zarr need the zarr and ome-zarr packages, which "
                          "need Python 3.11 or later") from None
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
    ``unetsl.predict.engine``. Pickles as the store's path, so Dask workers reopen it themselves.
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
        try:
            block = np.asarray(self.array[tuple(file_key)])
        except IndexError:
            raise
        except Exception as exc:  # a damaged chunk: codecs raise many types
            raise UnetslError(f"{self.path or 'zarr array'}: cannot read the pixels "
                              f"({_one_line(exc)})") from exc
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
    frame_interval : seconds between frames (the "t" axis' scale in a time unit), or None.
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
    frame_interval: float | None = None

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        return self.data.shape

    @property
    def chunks(self) -> tuple[int, int, int, int, int]:
        return self.data.chunks


def _multiscale(attrs: dict, name: str) -> tuple[Any, str] | None:
    """(first ``multiscales`` entry, NGFF version) of a group's attributes, or None.

    The entry is an ome-zarr-models ``Multiscale`` (validated: axes, datasets, scale
    transforms of matching length). 0.1 to 0.3, which the models do not cover, are first
    put in the 0.4 form (``_as_v04``).
    """
    ome = attrs.get("ome")
    if isinstance(ome, dict) and ome.get("multiscales"):  # 0.5: all under "ome"
        found, version = ome["multiscales"], str(ome.get("version", "0.5"))
    elif attrs.get("multiscales"):
        found = attrs["multiscales"]
        first = found[0] if isinstance(found, list) and isinstance(found[0], dict) else {}
        version = str(first.get("version", "0.4"))
    else:
        return None
    legacy = version in ("0.1", "0.2", "0.3")
    if not legacy and version not in NGFF_VERSIONS:
        raise UnetslError(f"{name}: OME-Zarr version {version!r} is not supported "
                          f"(0.1 to {NGFF_VERSIONS[-1]})")
    try:
        if version == "0.5":
            from ome_zarr_models.v05.multiscales import Multiscale
        else:
            from ome_zarr_models.v04.multiscales import Multiscale
    except ImportError:
        raise UnetslError(f"{name}: reading OME-Zarr needs the ome-zarr-models package "
                          "(Python 3.11 or later)") from None
    try:
        return Multiscale.model_validate(_as_v04(found[0]) if legacy else found[0]), version
    except Exception as exc:  # pydantic's ValidationError, or a malformed entry
        raise UnetslError(f"{name}: invalid OME-Zarr {version} \"multiscales\" metadata "
                          f"({_first_problem(exc)})") from exc


def _as_v04(entry: dict) -> dict:
    """A NGFF 0.1 to 0.3 ``multiscales`` entry in the 0.4 form: axes as objects (0.3 names
    them, 0.1 and 0.2 are always tczyx), each dataset with a unit scale."""
    names = [str(a) for a in entry.get("axes") or AXES]
    types = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
    unit_scale = [{"type": "scale", "scale": [1.0] * len(names)}]
    return {**entry, "version": "0.4", "axes": [{"name": a, "type": types.get(a)} for a in names],
            "datasets": [{**d, "coordinateTransformations": unit_scale}
                         for d in entry.get("datasets") or [] if isinstance(d, dict)]}


def _first_problem(exc: BaseException) -> str:
    """The first of pydantic's errors as one line: where, and what."""
    try:
        first = exc.errors()[0]  # a pydantic ValidationError
    except Exception:
        return _one_line(exc)
    where = ".".join(str(p) for p in first.get("loc", ()))
    what = str(first.get("msg", "")).removeprefix("Value error, ")
    return _one_line(ValueError(f"{where}: {what}" if where else what))


def _scale_of(transforms: Sequence[Any] | None, n: int) -> list[float]:
    """The product of the scale transforms of length ``n`` (models' ``VectorScale``; a
    scale stored in a binary file is ignored)."""
    scale = [1.0] * n
    for transform in transforms or []:
        values = getattr(transform, "scale", None)
        if getattr(transform, "type", None) == "scale" and isinstance(values, (list, tuple)) \
                and len(values) == n:
            scale = [s * float(v) for s, v in zip(scale, values)]
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


def _check_chunks(array: Any, name: str) -> None:
    """A chunk missing from the store reads as the fill value; without one (a zarr v2 array
    with "fill_value": null) its pixels are undefined, so the array is refused."""
    if getattr(array, "fill_value", 0) is not None:
        return
    try:
        stored, total = int(array.nchunks_initialized), int(array.nchunks)
    except Exception:  # a store that cannot list its keys: nothing to check
        return
    if stored < total:
        raise UnetslError(f"{name}: {total - stored} of {total} chunks are missing and the "
                          "array has no fill value, so their pixels are undefined")


def open_zarr(path: str | os.PathLike, *, depth_wanted: int = 1, level: int = 0) -> ZarrImage:
    """Open a zarr array or OME-Zarr image for block reads as (t, c, z, y, x).

    depth_wanted : the z size of the model's patch; a 2D time series (t > 1, z == 1) is then
        read with frames as z, as ``unetsl.io.tiff.read_image`` does.
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
    interval = None
    array_path = None
    attrs: dict = {}
    if isinstance(node, zarr.Group):
        attrs = node.attrs.asdict()
        found = _multiscale(attrs, name)
        if found is None and ("bioformats2raw.layout" in attrs
                              or "bioformats2raw.layout" in attrs.get("ome", {})) \
                and "0" in node:
            node, array_path = node["0"], "0/"
            attrs = node.attrs.asdict()
            found = _multiscale(attrs, name)
        if found is None:
            raise UnetslError(f"{name}: zarr group without OME-Zarr \"multiscales\" metadata; "
                              "give the path of an image or array inside it")
        multiscale, version = found
        datasets = multiscale.datasets  # at least one: the models check
        if not 0 <= level < len(datasets):
            raise UnetslError(f"{name}: resolution level {level} does not exist "
                              f"(levels 0..{len(datasets) - 1})")
        levels = len(datasets)
        dataset_path = str(datasets[level].path)
        try:
            array = node[dataset_path]
        except KeyError:
            raise UnetslError(f"{name}: OME-Zarr dataset {dataset_path!r} is missing") from None
        array_path = (array_path or "") + dataset_path
        letters = "".join(str(a.name)[:1].lower() for a in multiscale.axes)
        scale = _scale_of(datasets[level].coordinateTransformations, len(letters))
        top = _scale_of(multiscale.coordinateTransformations, len(letters))
        scale = [s * g for s, g in zip(scale, top)]
        for i, letter in enumerate(letters):
            if letter in "zyx" and scale[i] > 0:
                spacing["zyx".index(letter)] = float(scale[i])
        units = {str(a.name)[:1].lower(): a.unit for a in multiscale.axes
                 if isinstance(a.unit, str)}
        unit = unetsl_unit(units.get("x") or units.get("y"))
        if "t" in letters:
            interval = ngff_interval(scale[letters.index("t")], units.get("t"))
        label = multiscale.name if isinstance(multiscale.name, str) else None
    else:
        array = node
        letters = _dimension_names(array) or _RANK_AXES.get(len(array.shape))
        if letters is None:
            raise UnetslError(f"{name}: zarr array of shape {tuple(array.shape)}; expected 2 to "
                              "5 dims (yx, zyx, czyx or tczyx) or named dimensions")
    _check_chunks(array, name)
    view = ZarrView(array, letters, path=name, array_path=array_path)
    t, _, z = view.shape[:3]
    swap = depth_wanted > 1 and t > 1 and z == 1
    if swap:
        view = ZarrView(array, letters, swap_tz=True, path=name, array_path=array_path)
    return ZarrImage(view, letters, tuple(spacing), unit, swap, name, levels, version,
                     label, attrs, interval)


def read_zarr(path: str | os.PathLike, *, depth_wanted: int = 1, level: int = 0):
    """Read a whole zarr / OME-Zarr image into memory as a ``unetsl.io.tiff.Image``."""

    image = open_zarr(path, depth_wanted=depth_wanted, level=level)
    return Image(image.data[:, :, :, :, :], image.spacing, image.unit, image.time_as_depth,
                 image.path, image.frame_interval)


