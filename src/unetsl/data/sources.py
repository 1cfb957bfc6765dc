"""Data sources: the config's "data sources" entries, file pairing and loading into volumes.

A data source is a plain JSON object in the config's ``"data sources"`` list, stored as the
original ActiveUnetSegmentation stored it, so old configs load unchanged:

- ``"paired directories"``: ``"input folders"`` and ``"label folders"`` (equal-length lists,
  zipped pairwise);
- ``"weighted directories"``: the same plus ``"weights folders"``; the per-pixel weights
  multiply the loss (they become Keras sample weights);
- ``"paired files"``: ``"training images"`` and ``"label images"`` (and optionally
  ``"weight images"``), explicit lists of files.

Every source has a ``"labeller"`` and ``"rotations"`` (angles in **degrees**; the original
used the numbers as radians: add ``"rotation unit": "radians"`` to a source written by the
original to keep its meaning). Optional: ``"n labels"`` (checked against the model) and
per-source values of the sampling keys (:data:`SOURCE_SETTINGS`) that override the config's.

Relative paths are resolved against the config file's folder (so a project folder can be
moved); ``$VARS`` and ``~`` are expanded when the files are listed.

Pairing, per folder pair: a label file pairs with the image of the same name, else with the
image whose name ends in the same number (``img-7.tif`` with ``lbl-07.tif``, the original's
rule). A label without an image is an error; images without a label are skipped with a
warning (a partly labelled folder).
"""

from __future__ import annotations

import copy
import difflib
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from unetsl.config.fields import check_value
from unetsl.config.model_config import Config
from unetsl.data.labellers import LABELLERS, Labeller, get_labeller
from unetsl.errors import UnetslError
from unetsl.io.tiff import _AXIS_TARGET

log = logging.getLogger("unetsl")

__all__ = [
    "FilePair",
    "SOURCE_SETTINGS",
    "SOURCE_TYPES",
    "Source",
    "check_pair_shapes",
    "check_source_files",
    "image_shape",
    "list_images",
    "make_entry",
    "pair_folders",
    "parse_angles",
    "parse_source",
    "parse_sources",
    "resolve_path",
    "stored_path",
]

PAIRED = "paired directories"
WEIGHTED = "weighted directories"
FILES = "paired files"
SOURCE_TYPES = (PAIRED, WEIGHTED, FILES)

#: Config keys a source may set for itself (they override the config's value).
SOURCE_SETTINGS = (
    "stride", "normalize samples", "normalization percentiles", "sampling",
    "foreground fraction", "patch jitter", "augment flips", "augment rotate 90",
    "augment intensity scale", "augment intensity shift", "augment elastic", "unknown label",
)

_FOLDER_KEYS = {PAIRED: ("input folders", "label folders"),
                WEIGHTED: ("input folders", "label folders", "weights folders")}
_FILE_KEYS = ("training images", "label images", "weight images")
_KNOWN_KEYS = {"source type", "input folders", "label folders", "weights folders",
               *_FILE_KEYS, "rotations", "rotation unit", "labeller", "n labels",
               "patch share", *SOURCE_SETTINGS}
IMAGE_SUFFIXES = (".tif", ".tiff", ".npy")
_MAX_LISTED = 4  # file names listed in one error line


# --- paths -----------------------------------------------------------------------------

def resolve_path(text: str, folder: str | os.PathLike, *, where: str = "") -> Path:
    """A stored path as a usable Path: ``$VARS`` and ``~`` expanded, relative to ``folder``."""
    expanded = os.path.expanduser(os.path.expandvars(text))
    unset = re.search(r"\$\{?(\w+)", expanded)
    if unset:
        raise UnetslError(f"{where}path {text!r}: environment variable "
                          f"${unset.group(1)} is not set")
    path = Path(expanded)
    return path if path.is_absolute() else Path(folder) / path


def stored_path(typed: str, folder: str | os.PathLike, cwd: str | os.PathLike | None = None) -> str:
    """How a path typed by the user is stored in the config.

    Text with ``$VARS`` or a leading ``~`` is kept as typed (portable between machines);
    a path inside the config's folder is stored relative to it (the project folder can be
    moved); any other path is stored absolute.
    """
    text = typed.strip()
    if "$" in text or text.startswith("~"):
        return text
    base = Path(cwd) if cwd is not None else Path.cwd()
    absolute = Path(os.path.abspath(base / text))
    config_folder = Path(os.path.abspath(folder))
    try:
        return absolute.relative_to(config_folder).as_posix() or "."
    except ValueError:
        return absolute.as_posix()


# --- source entries --------------------------------------------------------------------

@dataclass
class Source:
    """One validated entry of "data sources" (files not yet listed).

    index : position in the config's list (for messages: "source 1").
    kind : "paired directories", "weighted directories" or "paired files".
    folders : per role ("input", "label", "weights") the stored folder (or file) texts.
    rotations : angles in degrees (radians converted when "rotation unit" says so).
    labeller : the labeller of the label images.
    settings : per-source values of :data:`SOURCE_SETTINGS`.
    """

    index: int
    kind: str
    folders: dict[str, list[str]]
    rotations: tuple[float, ...]
    labeller: Labeller
    folder: Path
    n_labels: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    entry: dict[str, Any] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"source {self.index}: "

    @property
    def weighted(self) -> bool:
        return "weights" in self.folders

    def setting(self, cfg: Mapping[str, Any], key: str) -> Any:
        """The source's own value of ``key`` when it sets one, else the config's."""
        return self.settings[key] if key in self.settings else cfg[key]

    def describe(self) -> str:
        """One line: type, folders, labeller, rotations, settings."""
        parts = [self.kind]
        for role, items in self.folders.items():
            parts.append(f"{role}: {', '.join(items)}")
        parts.append(self.labeller.name)
        if self.rotations:
            parts.append("rotations " + ", ".join(f"{a:g}" for a in self.rotations) + " deg")
        parts += [f"{k}={v}" for k, v in self.settings.items()]
        return "; ".join(parts)

    def pairs(self) -> list[FilePair]:
        """The (image, label[, weights]) files of this source, paired; see :func:`pair_folders`."""
        roles = list(self.folders)
        if self.kind == FILES:
            lists = [self.folders[r] for r in roles]
            return [FilePair(*[resolve_path(t, self.folder, where=self.where) for t in files])
                    for files in zip(*lists, strict=True)]
        result: list[FilePair] = []
        for texts in zip(*(self.folders[r] for r in roles), strict=True):
            folders = [resolve_path(t, self.folder, where=self.where) for t in texts]
            result += pair_folders(folders, where=self.where)
        return result


@dataclass(frozen=True)
class FilePair:
    """An input image, its label image and (weighted sources) its weights image."""

    image: Path
    label: Path
    weights: Path | None = None


def _string_list(entry: Mapping[str, Any], key: str, where: str) -> list[str]:
    value = entry.get(key)
    if isinstance(value, str):
        value = [value]
    if (not isinstance(value, list) or not value
            or not all(isinstance(v, str) and v.strip() for v in value)):
        raise UnetslError(f'{where}"{key}" must be a non-empty list of paths, got {value!r}')
    return list(value)


def parse_source(entry: Any, index: int, folder: str | os.PathLike) -> Source:
    """Validate one "data sources" entry (keys and values, not the files)."""
    where = f"source {index}: "
    if not isinstance(entry, Mapping):
        raise UnetslError(f"{where}must be a JSON object, got {entry!r}")
    kind = entry.get("source type")
    if kind not in SOURCE_TYPES:
        raise UnetslError(f'{where}"source type" must be one of '
                          f'{", ".join(repr(t) for t in SOURCE_TYPES)}, got {kind!r}')
    for key in entry:
        if key not in _KNOWN_KEYS:
            hint = difflib.get_close_matches(key, sorted(_KNOWN_KEYS), n=1, cutoff=0.6)
            tip = f' (did you mean "{hint[0]}"?)' if hint else ""
            log.warning(f'{where}unknown key "{key}" ignored{tip}')
    folders: dict[str, list[str]] = {}
    if kind == FILES:
        keys = [k for k in _FILE_KEYS if k in entry or k != "weight images"]
        lists = [_string_list(entry, k, where) for k in keys]
        if len({len(v) for v in lists}) != 1:
            sizes = ", ".join(f'"{k}" {len(v)}' for k, v in zip(keys, lists, strict=True))
            raise UnetslError(f"{where}lists of files must have the same length ({sizes})")
        for role, files in zip(("input", "label", "weights"), lists):
            folders[role] = files
    else:
        keys = _FOLDER_KEYS[kind]
        lists = [_string_list(entry, k, where) for k in keys]
        if len({len(v) for v in lists}) != 1:
            sizes = ", ".join(f'"{k}" {len(v)}' for k, v in zip(keys, lists, strict=True))
            raise UnetslError(f"{where}folder lists must have the same length ({sizes})")
        for role, items in zip(("input", "label", "weights"), lists):
            folders[role] = items
    if "labeller" not in entry:
        raise UnetslError(f'{where}missing "labeller" (one of {", ".join(LABELLERS)})')
    try:
        labeller = get_labeller(entry["labeller"])
    except UnetslError as err:
        raise UnetslError(f"{where}{err}") from None
    rotations = _parse_rotations(entry, where, folder)
    n_labels = entry.get("n labels")
    if n_labels is not None and (not isinstance(n_labels, int) or isinstance(n_labels, bool)
                                 or n_labels < 1):
        raise UnetslError(f'{where}"n labels" must be an integer >= 1, got {n_labels!r}')
    settings = {}
    for key in SOURCE_SETTINGS:
        if key in entry:
            check_value(key, entry[key], source=f"source {index}")
            settings[key] = copy.deepcopy(entry[key])
    return Source(index=index, kind=kind, folders=folders, rotations=rotations,
                  labeller=labeller, folder=Path(folder), n_labels=n_labels,
                  settings=settings, entry=dict(entry))


def _parse_rotations(entry: Mapping[str, Any], where: str, folder: str | os.PathLike = ""
                     ) -> tuple[float, ...]:
    values = entry.get("rotations", [])
    if values is None:
        values = []
    if not isinstance(values, list) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in values):
        raise UnetslError(f'{where}"rotations" must be a list of angles in degrees, got {values!r}')
    unit = entry.get("rotation unit", "degrees")
    if unit not in ("degrees", "radians"):
        raise UnetslError(f'{where}"rotation unit" must be "degrees" or "radians", got {unit!r}')
    if unit == "radians":
        return tuple(math.degrees(v) for v in values)
    nonzero = [abs(v) for v in values if v]
    if ("rotation unit" not in entry and nonzero and max(nonzero) <= 2 * math.pi
            and any(v != int(v) for v in nonzero)):  # unetsl writes the unit: the original's
        note = (f"{where}rotations {values} are read as degrees; if this config comes from "
                'the original (which used radians), add "rotation unit": "radians"')
        if (str(folder), note) not in _NOTED:  # once per run, not at every parse
            _NOTED.add((str(folder), note))
            log.warning(note)
    return tuple(float(v) for v in values)


_NOTED: set[tuple[str, str]] = set()


def parse_sources(cfg: Config) -> list[Source]:
    """Every entry of the config's "data sources", validated; an empty list is an error."""
    entries = cfg["data sources"]
    where = f"{cfg.path}: " if getattr(cfg, "path", None) else ""
    if not entries:
        raise UnetslError(f'{where}"data sources" is empty; add training data with '
                          "attach_data_sources")
    return [parse_source(e, i, cfg.folder) for i, e in enumerate(entries)]


def parse_angles(text: str) -> list[float]:
    """Angles as typed at the menu or with --angles: numbers separated by spaces or commas.

    Returns the angles as floats; an unparsable token is a UnetslError naming it.
    """
    angles = []
    for token in re.split(r"[\s,]+", text.strip()):
        if not token:
            continue
        try:
            value = float(token)
        except ValueError:
            raise UnetslError(f"cannot convert {token!r} to an angle in degrees") from None
        if not math.isfinite(value):
            raise UnetslError(f"cannot use angle {token!r}")
        angles.append(value)
    return angles


def make_entry(kind: str, paths: Sequence[str], labeller: str | int, angles: Sequence[float] = (),
               settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A new "data sources" entry in the original's layout, plus ``"rotation unit":
    "degrees"`` (angles are degrees; the original's entries, without it, used radians).

    paths : stored folder (or file) paths: (images, labels) or (images, labels, weights).
    """
    name = get_labeller(labeller).name
    # the unit is written so that reading it back never needs the original's radians note
    turns = {"rotations": list(angles), "rotation unit": "degrees"}
    if kind == PAIRED:
        entry = {"source type": PAIRED, "input folders": [paths[0]],
                 "label folders": [paths[1]], **turns, "labeller": name}
    elif kind == WEIGHTED:
        entry = {"source type": WEIGHTED, "input folders": [paths[0]],
                 "label folders": [paths[1]], "weights folders": [paths[2]],
                 **turns, "labeller": name}
    elif kind == FILES:
        entry = {"source type": FILES, "training images": [paths[0]],
                 "label images": [paths[1]], **turns, "labeller": name}
        if len(paths) > 2:
            entry["weight images"] = [paths[2]]
    else:
        raise UnetslError(f"unknown source type {kind!r}")
    entry.update(settings or {})
    return entry


# --- files -----------------------------------------------------------------------------

def _base_name(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", *IMAGE_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _trailing_number(path: Path) -> int | None:
    match = re.search(r"(\d+)$", _base_name(path))
    return int(match.group(1)) if match else None


def list_images(folder: Path, *, where: str = "", role: str = "images") -> list[Path]:
    """Image files (.tif, .tiff, .npy; not hidden) of ``folder``, sorted by name."""
    if not folder.exists():
        raise UnetslError(f"{where}{role} folder {folder} does not exist")
    if not folder.is_dir():
        raise UnetslError(f"{where}{role} folder {folder} is not a folder")
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and not p.name.startswith(".")
                   and p.name.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise UnetslError(f"{where}{role} folder {folder} holds no .tif/.tiff/.npy images")
    return files


def _listed(paths: Sequence[Path]) -> str:
    names = ", ".join(p.name for p in paths[:_MAX_LISTED])
    return names + (f" and {len(paths) - _MAX_LISTED} more" if len(paths) > _MAX_LISTED else "")


def _match(files: list[Path], targets: list[Path]) -> dict[Path, Path]:
    """For each file, the target with the same base name, else the same trailing number."""
    by_name = {_base_name(t): t for t in targets}
    by_number: dict[int, list[Path]] = {}
    for t in targets:
        number = _trailing_number(t)
        if number is not None:
            by_number.setdefault(number, []).append(t)
    matched = {}
    for f in files:
        target = by_name.get(_base_name(f))
        if target is None:
            number = _trailing_number(f)
            candidates = by_number.get(number, []) if number is not None else []
            if len(candidates) == 1:
                target = candidates[0]
        if target is not None:
            matched[f] = target
    return matched


def pair_folders(folders: Sequence[Path], *, where: str = "") -> list[FilePair]:
    """Pair the images of (images, labels[, weights]) folders by name, else trailing number.

    Raises a one-line UnetslError naming the files that do not pair (labels or weights
    without an image, two labels for one image); images without a label are skipped with
    a warning.
    """
    roles = ("images", "labels", "weights")
    lists = [list_images(f, where=where, role=r) for f, r in zip(folders, roles)]
    images, labels = lists[0], lists[1]
    label_to_image = _match(labels, images)
    lost = [p for p in labels if p not in label_to_image]
    if lost:
        raise UnetslError(f"{where}{len(lost)} label image(s) in {folders[1]} have no image in "
                          f"{folders[0]} (same name or same number at the end): {_listed(lost)}")
    image_to_label: dict[Path, Path] = {}
    for label, image in label_to_image.items():
        if image in image_to_label:
            raise UnetslError(f"{where}{image.name} in {folders[0]} pairs with two labels: "
                              f"{image_to_label[image].name} and {label.name}")
        image_to_label[image] = label
    unlabelled = [p for p in images if p not in image_to_label]
    if unlabelled:
        log.warning(f"{where}{len(unlabelled)} image(s) in {folders[0]} have no label and are "
                    f"not used: {_listed(unlabelled)}")
    paired = [p for p in images if p in image_to_label]
    weights: dict[Path, Path] = {}
    if len(folders) > 2:
        image_to_weights = _match(paired, lists[2])
        missing = [p for p in paired if p not in image_to_weights]
        if missing:
            raise UnetslError(f"{where}{len(missing)} image(s) in {folders[0]} have no weights "
                              f"in {folders[2]}: {_listed(missing)}")
        weights = image_to_weights
    return [FilePair(p, image_to_label[p], weights.get(p)) for p in paired]


def image_shape(path: Path) -> tuple[int, int, int, int, int]:
    """(t, c, z, y, x) of an image file, from its header (no pixels are read)."""
    name = str(path)
    try:
        if path.suffix.lower() == ".npy":
            shape = np.load(name, mmap_mode="r").shape
            axes = {2: "YX", 3: "ZYX", 4: "CZYX", 5: "TCZYX"}.get(len(shape))
            if axes is None:
                raise UnetslError(f"{name}: .npy array has shape {shape}; expected 2 to 5 dims")
        else:
            with tifffile.TiffFile(name) as tif:
                if not tif.series:
                    raise UnetslError(f"{name}: TIFF file holds no image")
                shape, axes = tif.series[0].shape, tif.series[0].axes
    except UnetslError:
        raise
    except Exception as exc:  # tifffile and numpy raise many kinds
        raise UnetslError(f"{name}: cannot read image ({' '.join(str(exc).split())})") from exc
    result = [1] * 5
    for letter, size in zip(axes.upper(), shape, strict=True):
        if letter in _AXIS_TARGET:
            result[_AXIS_TARGET[letter]] *= size
        elif size != 1:
            raise UnetslError(f"{name}: cannot map axes {axes!r} (shape {shape}) "
                              "to (t, c, z, y, x)")
    return tuple(result)  # type: ignore[return-value]


def check_pair_shapes(pair: FilePair, *, where: str = "") -> None:
    """Images, labels and weights must have the same (t, z, y, x); checked from headers.

    The message gives whole (t, c, z, y, x) shapes: a file whose channels were read as
    slices (or the other way) shows as such instead of as an unexplained z mismatch.
    """
    shape = image_shape(pair.image)
    for other in (pair.label, pair.weights):
        if other is None:
            continue
        other_shape = image_shape(other)
        if (other_shape[0], *other_shape[2:]) != (shape[0], *shape[2:]):
            raise UnetslError(shape_mismatch(pair.image, shape, other, other_shape, where))


def shape_mismatch(image: Path, shape: Sequence[int], other: Path, other_shape: Sequence[int],
                   where: str = "") -> str:
    """One line naming both files and every axis, (t, c, z, y, x)."""
    return (f"{where}{image} has (t, c, z, y, x) = {tuple(shape)} but {other} has "
            f"{tuple(other_shape)}; they must agree in t, z, y and x (only channel 0 of a "
            "label or weights image is used)")


def check_source_files(source: Source) -> list[FilePair]:
    """List, pair and shape-check the files of ``source`` (headers only); the pairs."""
    pairs = source.pairs()
    for pair in pairs:
        for path in (pair.image, pair.label, pair.weights):
            if path is not None and not path.is_file():
                raise UnetslError(f"{source.where}{path} is not a file")
        check_pair_shapes(pair, where=source.where)
    return pairs


