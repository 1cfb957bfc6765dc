"""Image files in and out: TIFF (ImageJ, OME, plain) and .npy, always as (t, c, z, y, x).

Every other module works on 5-D (t, c, z, y, x) arrays; this module is the only
place that knows about file axes, ImageJ/OME metadata and pixel sizes, so that a
prediction goes back to Fiji with the calibration of the image it came from.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from unetsl.atomic import atomic_path
from unetsl.errors import UnetslError
from unetsl.io import timing

__all__ = ["Image", "read_image", "write_image", "write_like", "match_channels"]

# Where each axis letter tifffile reports goes in (t, c, z, y, x). Samples (RGB)
# are channels; generic page axes ('I' pages, 'Q' unknown) are stacked like z.
# Several letters with the same target are merged, in file order (e.g. C and S).
_AXIS_TARGET = {"T": 0, "C": 1, "S": 1, "Z": 2, "I": 2, "Q": 2, "Y": 3, "X": 4}
_NPY_AXES = {2: "YX", 3: "ZYX", 4: "CZYX", 5: "TCZYX"}
# dtypes an ImageJ hyperstack can hold (tifffile refuses the others with imagej=True).
_IMAGEJ_DTYPES = {np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.int16),
                  np.dtype(np.float32)}


@dataclass
class Image:
    """A loaded image with the calibration needed to write results back alike.

    data : (t, c, z, y, x) ndarray in the file's dtype.
    spacing : pixel size (z, y, x) in ``unit``.
    time_as_depth : frames of a 2D time series were moved to z on reading;
        ``write_like`` moves them back so Fiji sees frames again.
    frame_interval : seconds between frames (None: unknown), kept so outputs of a
        time-lapse movie show its timing.
    """

    data: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    unit: str = "pixel"
    time_as_depth: bool = False
    path: str | None = None
    frame_interval: float | None = None


def read_image(path: str | os.PathLike, *, depth_wanted: int = 1) -> Image:
    """Read a TIFF or .npy file as (t, c, z, y, x), keeping dtype and pixel size.

    ``depth_wanted`` is the z size of the model's patch: when it is > 1 and the
    image is a 2D time series (frames > 1, z == 1), the frames are used as z
    (the original's rule, so 2D models with z > 1 see consecutive time points).
    """
    name = str(path)
    if Path(name).is_dir():
        raise UnetslError(f"{name}: is a folder, expected an image file")
    if not Path(name).is_file():
        raise UnetslError(f"{name}: no such file")
    if Path(name).suffix.lower() == ".npy":
        image = _read_npy(name)
    else:
        try:
            image = _read_tiff(name)
        except UnetslError:
            raise
        except tifffile.TiffFileError as exc:
            raise UnetslError(f"{name}: not a readable TIFF file ({_one_line(exc)})") from exc
        except Exception as exc:  # codecs and OS errors are many
            raise UnetslError(f"{name}: cannot read image ({_one_line(exc)})") from exc
    image.data, image.time_as_depth = frames_as_depth(image.data, depth_wanted)
    return image


def frames_as_depth(data: np.ndarray, depth_wanted: int) -> tuple[np.ndarray, bool]:
    """(t, c, z, y, x) with the frames of a 2D time series moved to z when the model wants
    depth (``depth_wanted`` > 1, t > 1, z == 1): the original's rule; also True if moved."""
    t, _, z = data.shape[:3]
    if depth_wanted > 1 and t > 1 and z == 1:
        return np.swapaxes(data, 0, 2), True
    return data, False


def _read_npy(name: str) -> Image:
    try:
        data = np.load(name, allow_pickle=False)
    except Exception as exc:
        raise UnetslError(f"{name}: cannot read .npy ({_one_line(exc)})") from exc
    if data.ndim not in _NPY_AXES:
        raise UnetslError(f"{name}: .npy array has shape {data.shape}; expected 2 to 5 dims "
                          "(yx, zyx, czyx or tczyx)")
    return Image(_to_tczyx(data, _NPY_AXES[data.ndim], name), path=name)


def _read_tiff(name: str) -> Image:
    with tifffile.TiffFile(name) as tif:
        if not tif.series:
            raise UnetslError(f"{name}: TIFF file holds no image")
        series = tif.series[0]
        data = _to_tczyx(series.asarray(), series.axes, name)
        spacing, unit, interval = tiff_calibration(tif)
    return Image(data, spacing=spacing, unit=unit, path=name, frame_interval=interval)


def tiff_calibration(tif: tifffile.TiffFile
                     ) -> tuple[tuple[float, float, float], str, float | None]:
    """(pixel size (z, y, x), unit, frame interval in seconds) of an open TIFF: from its
    OME-XML or ImageJ description (one reading for the eager and the lazy path)."""
    if tif.series[0].kind == "ome" and tif.ome_metadata:
        pixels = _ome_pixels(tif.ome_metadata)
        return (*_ome_calibration(pixels), timing.ome_interval(pixels))
    meta = tif.imagej_metadata
    if meta is not None:
        tunit = meta.get("tunit")
        interval = timing.imagej_interval(
            meta.get("finterval"), None if tunit is None else _unescape_imagej(str(tunit)))
        return (*_imagej_calibration(meta, tif.pages[0]), interval)
    return (1.0, 1.0, 1.0), "pixel", None


def to_tczyx(data: np.ndarray, axes: str, *, source: str = "array") -> np.ndarray:
    """An array whose axes are named by letters (tifffile's: "TYX", "ZCYX" ...) as
    (t, c, z, y, x), e.g. a viewer's layer; one-line UnetslError naming ``source``."""
    return _to_tczyx(np.asarray(data), axes, source)


def _to_tczyx(data: np.ndarray, axes: str, source: str) -> np.ndarray:
    """Reorder an array with tifffile axis letters into (t, c, z, y, x)."""
    axes = axes.upper()
    unknown = [a for a, n in zip(axes, data.shape, strict=True)
               if a not in _AXIS_TARGET and n != 1]
    if unknown or axes.count("Y") != 1 or axes.count("X") != 1:
        raise UnetslError(f"{source}: cannot map axes {axes!r} (shape {data.shape}) "
                          "to (t, c, z, y, x)")
    kept = [i for i, a in enumerate(axes) if a in _AXIS_TARGET]  # drops size-1 extras
    data = data.reshape([data.shape[i] for i in kept])
    targets = [_AXIS_TARGET[axes[i]] for i in kept]
    order = sorted(range(len(kept)), key=lambda k: (targets[k], k))
    shape = [1] * 5
    for k, target in enumerate(targets):
        shape[target] *= data.shape[k]
    return data.transpose(order).reshape(shape)


def _imagej_calibration(meta: dict, page) -> tuple[tuple[float, float, float], str]:
    """Pixel size from X/YResolution (pixels per unit) and ImageJ spacing/unit."""
    sizes = []
    for tag_name in ("XResolution", "YResolution"):
        tag = page.tags.get(tag_name)
        size = 1.0
        if tag is not None:
            num, den = tag.value
            size = den / num if num and den else 1.0
        sizes.append(size)
    sz = _positive(meta.get("spacing"), 1.0)
    return (sz, sizes[1], sizes[0]), _unescape_imagej(str(meta.get("unit", "pixel")))


def _unescape_imagej(text: str) -> str:
    """Undo ImageJ's ASCII escapes ('\\u00B5m' -> 'µm') so units compare as users type them."""
    return re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), text)


def _ome_pixels(xml: str) -> dict:
    """The Pixels element of the first OME image, as a dict."""
    image = tifffile.xml2dict(xml).get("OME", {}).get("Image", {})
    if isinstance(image, list):
        image = image[0] if image else {}
    pixels = image.get("Pixels", {})
    return pixels if isinstance(pixels, dict) else {}


def _ome_calibration(pixels: dict) -> tuple[tuple[float, float, float], str]:
    """PhysicalSize{Z,Y,X} and the X unit of an OME Pixels element."""
    if "PhysicalSizeX" not in pixels:
        return (1.0, 1.0, 1.0), "pixel"
    spacing = tuple(_positive(pixels.get(f"PhysicalSize{a}"), 1.0) for a in "ZYX")
    return spacing, str(pixels.get("PhysicalSizeXUnit", "µm"))  # OME's default unit


def _positive(value, default: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return default
    return value if value > 0 else default


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def write_image(path: str | os.PathLike, data: np.ndarray, *,
                spacing: tuple[float, float, float] = (1.0, 1.0, 1.0), unit: str = "pixel",
                time_as_depth: bool = False, frame_interval: float | None = None) -> None:
    """Write an ImageJ hyperstack (TZCYX) that Fiji opens with the right calibration.

    data : (t, c, z, y, x) ndarray; 2-D (y, x), 3-D (z, y, x) and 4-D (c, z, y, x)
        are accepted too. dtypes ImageJ cannot hold are converted without loss
        where possible (see ``_imagej_dtype``).
    spacing : pixel size (z, y, x) in ``unit``.
    time_as_depth : z holds the frames of a 2D time series; written back as frames.
    frame_interval : seconds between frames (ImageJ's finterval), None when unknown.
    """
    data = np.asarray(data)
    if data.ndim not in _NPY_AXES:
        raise UnetslError(f"{path}: cannot write an array of shape {data.shape}; "
                          "expected 2 to 5 dims (yx, zyx, czyx or tczyx)")
    data = _to_tczyx(data, _NPY_AXES[data.ndim], str(path))
    if time_as_depth:
        data = np.swapaxes(data, 0, 2)
    sz, sy, sx = (float(s) for s in spacing)
    if min(sz, sy, sx) <= 0:
        raise UnetslError(f"{path}: pixel size must be positive, got {tuple(spacing)}")
    data = _imagej_dtype(data)
    metadata = imagej_metadata(sz, unit, timing.check_interval(frame_interval, path))
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, np.ascontiguousarray(data.transpose(0, 2, 1, 3, 4)),
                         imagej=True, photometric="minisblack",
                         resolution=(1.0 / sx, 1.0 / sy), metadata=metadata)


def imagej_metadata(spacing_z: float, unit: str, frame_interval: float | None) -> dict:
    """tifffile's ImageJ metadata of a TZCYX hyperstack: z spacing, unit and, when known,
    the frame interval (finterval in tunit "sec", as Fiji shows it)."""
    metadata: dict = {"axes": "TZCYX", "spacing": spacing_z, "unit": _imagej_text(unit)}
    if frame_interval is not None:
        metadata.update(finterval=frame_interval, tunit=timing.IMAGEJ_TIME_UNIT)
    return metadata


def write_like(path: str | os.PathLike, data: np.ndarray, like: Image) -> None:
    """Write ``data`` with the calibration, frame interval and frame/z layout of the image it
    came from."""
    write_image(path, data, spacing=like.spacing, unit=like.unit,
                time_as_depth=like.time_as_depth,
                frame_interval=like.frame_interval)


def _imagej_dtype(data: np.ndarray) -> np.ndarray:
    """Convert to a dtype ImageJ supports: bool -> uint8; other integers -> the
    smallest of uint8/uint16 that holds their range, else float32; floats -> float32."""
    if data.dtype in _IMAGEJ_DTYPES:
        return data
    if data.dtype == np.bool_:
        return data.astype(np.uint8)
    if np.issubdtype(data.dtype, np.integer):
        low, high = (int(data.min()), int(data.max())) if data.size else (0, 0)
        if low >= 0 and high <= np.iinfo(np.uint8).max:
            return data.astype(np.uint8)
        if low >= 0 and high <= np.iinfo(np.uint16).max:
            return data.astype(np.uint16)
        return data.astype(np.float32)
    if np.issubdtype(data.dtype, np.floating):
        return data.astype(np.float32)
    raise UnetslError(f"cannot write dtype {data.dtype} to an ImageJ TIFF")


def _imagej_text(text: str) -> str:
    """ImageJ descriptions are ASCII; escape other characters as ImageJ does (µ -> \\u00B5)."""
    return "".join(c if ord(c) < 128 else f"\\u{ord(c):04X}" for c in text)


def match_channels(data: np.ndarray, n_channels: int, *, source: str = "image") -> np.ndarray:
    """Give a (t, c, z, y, x) array ``n_channels`` channels, as the original did.

    A single-channel image whose x size equals ``n_channels`` is channels-last
    (e.g. a (y, x, c) array read as z, y, x) and is moved; otherwise a z divisible
    by ``n_channels`` holds interleaved channel planes (plane k -> channel k mod n).
    """
    t, c, z, y, x = data.shape
    if c == n_channels:
        return data
    if c == 1 and x == n_channels:
        return np.moveaxis(data, -1, 1)
    if c == 1 and n_channels > 0 and z % n_channels == 0:
        return data.reshape(t, z // n_channels, n_channels, y, x).transpose(0, 2, 1, 3, 4)
    raise UnetslError(f"{source}: shape {data.shape} (t, c, z, y, x) has {c} channel(s); "
                      f"the model expects {n_channels}")
