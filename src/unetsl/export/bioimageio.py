"""Export a trained model as a BioImage Model Zoo (bioimage.io) model package.

A package is a zip file with an ``rdf.yaml`` description (format 0.5 of the bioimage.io
model spec) and the files it names: the weights (Keras 3 ``.keras``, Keras HDF5 ``.h5`` and a
zipped TensorFlow SavedModel, so that Python tools, ilastik, napari and Fiji's deepImageJ all
find a format they run), a test input and the output unetsl computed for it (consumers check
they reproduce it), a cover image and a README. The description says the axes of the
tensors (channels-last: batch, z or time, y, x, channel), the pixel size of the sample image,
the pre-processing the model was trained with ("normalize samples", "normalization
percentiles" of its config) and how unetsl turns the probabilities into labels.

The description is built from the official ``bioimageio.spec`` model classes (ModelDescr,
tensor, axis, preprocessing and weights descriptions), which check every field as it is
made, and the library writes the package (rdf.yaml, checksums, zip); so export needs that
package (``pip install 'unetsl[bioimageio]'``) and says so before any model is loaded. Our
own code writes only what the library cannot (unetsl.export.package_files): the weights of
the Keras model, the test and sample tensors, the cover image and the README.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

import unetsl
from unetsl.atomic import atomic_path
from unetsl.config.model_config import config_for_model
from unetsl.data.normalize import model_normalization
from unetsl.errors import UnetslError
from unetsl.export.inputs import (
    _config_settings,
    _preprocess,
    _preprocessing_descr,
    _sample_tile,
    _synthetic_tile,
)
from unetsl.export.package_files import (
    REDUCTION_TEXT,
    UNET_CITATIONS,
    _cover,
    _readme,
    _write_tensors,
    _write_weights,
)
from unetsl.export.validation import one_line
from unetsl.predict.reduce import reduction_for_activation

__all__ = ["ExportResult", "WEIGHT_FORMATS", "export_bioimageio"]

log = logging.getLogger("unetsl")

#: Weight formats that suit a Keras / TensorFlow model, the first one being the source.
WEIGHT_FORMATS = ("keras_v3", "keras_hdf5", "tensorflow_saved_model_bundle")
GIT_REPO = "https://github.com/FrancisCrickInstitute/ActiveUnetSegmentation"
#: zlib's default, which the package had before the library wrote it (the library's is 1).
ZIP_LEVEL = 6

_UNITS = {
    "um": "micrometer", "µm": "micrometer", "μm": "micrometer", "micron": "micrometer",
    "microns": "micrometer", "micrometer": "micrometer", "micrometre": "micrometer",
    "nm": "nanometer", "nanometer": "nanometer", "mm": "millimeter", "millimeter": "millimeter",
    "cm": "centimeter", "m": "meter", "meter": "meter", "a": "angstrom", "å": "angstrom",
    "angstrom": "angstrom", "pm": "picometer",
}

T = TypeVar("T")


@dataclass
class ExportResult:
    """What :func:`export_bioimageio` wrote; ``rdf`` is the package's rdf.yaml, as read back."""

    path: Path
    rdf: dict
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# The description (its inputs: unetsl.export.inputs; its files: unetsl.export.package_files)
# --------------------------------------------------------------------------------------------


def _require_spec() -> None:
    """bioimageio.spec builds and writes the package: check for it before the long work."""
    try:
        import bioimageio.spec  # noqa: F401
    except ImportError:
        raise UnetslError("exporting a bioimage.io package needs the bioimageio.spec package: "
                          "pip install 'unetsl[bioimageio]'") from None


def _context():
    """Build without file I/O: no online look-up of GitHub users (validate_package does it,
    when asked), no re-hashing (the hashes are given); warnings are not logged."""
    from bioimageio.spec import ValidationContext

    return ValidationContext(perform_io_checks=False, log_warnings=False)


def _described(what: str, build: Callable[[], T]) -> T:
    """``build()``, a spec description; its validation error as one UnetslError line."""
    from pydantic import ValidationError

    try:
        with _context():
            return build()
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
        raise UnetslError(one_line(f"{what} is not valid for bioimage.io: "
                                 f"{where + ': ' if where else ''}{first['msg']}{more}")) from None


def _license(text: str):
    """An SPDX identifier that bioimage.io knows (current or deprecated)."""
    from bioimageio.spec.model import v0_5
    from pydantic import ValidationError

    for kind in (v0_5.LicenseId, v0_5.DeprecatedLicenseId):
        try:
            return kind(text)
        except ValidationError:
            pass
    raise UnetslError(f"license {text!r} is not an SPDX license identifier bioimage.io knows "
                      "(https://spdx.org/licenses/)")


def _resource_name(text: str) -> str:
    """bioimage.io names: letters, digits, spaces, _ - ( ); at most 128 characters."""
    name = re.sub(r"[^A-Za-z0-9 _\-()]", "-", text).strip(" -_") or "unetsl model"
    return name[:128]


def _space_unit(unit: str) -> str | None:
    return _UNITS.get(unit.strip().lower()) if unit else None


def _file(path: Path):
    """A packaged file and its checksum."""
    from bioimageio.spec.common import FileDescr
    from bioimageio.spec.utils import get_sha256

    return FileDescr(source=path, sha256=get_sha256(path))


def _input_axes(patch, image, space_ids: list[str]) -> list:
    """(batch, z or time, y, x, channel) axes of the patch; space axes carry the sample's
    pixel size when its unit is one bioimage.io knows."""
    from bioimageio.spec.model import v0_5

    c, z, y, x = patch
    spacing = image.spacing if image is not None else (1.0, 1.0, 1.0)
    unit = _space_unit(image.unit) if image is not None else None
    axes: list = [v0_5.BatchAxis()]
    for axis_id, size, scale in zip(space_ids, (z, y, x), spacing):
        if axis_id == "time":
            axes.append(v0_5.TimeInputAxis(id=v0_5.AxisId("time"), size=int(size)))
        elif unit is None:
            axes.append(v0_5.SpaceInputAxis(id=v0_5.AxisId(axis_id), size=int(size)))
        else:
            axes.append(v0_5.SpaceInputAxis(id=v0_5.AxisId(axis_id), size=int(size),
                                            unit=unit, scale=float(scale)))
    axes.append(v0_5.ChannelAxis(channel_names=[f"channel{i}" for i in range(c)]))
    return axes


def _output_axes(input_axes: list, out_shape: tuple[int, ...], channel_names: list[str],
                 patch: tuple[int, int, int, int]) -> list:
    """(batch, z, y, x, n) axes; full-resolution axes get a halo for tiled use."""
    from bioimageio.spec.model import v0_5

    axes: list = [v0_5.BatchAxis()]
    for in_axis, size, p in zip(input_axes[1:4], out_shape[1:4], patch[1:]):
        factor = p / size
        extra: dict[str, Any] = {}
        if "unit" in in_axis.model_fields_set:  # a pixel size: scaled with the resolution
            extra = {"unit": in_axis.unit, "scale": float(in_axis.scale) * factor}
        elif factor != 1:
            extra = {"scale": float(factor)}
        time = in_axis.type == "time"
        halo = size // 8 if size == p and size >= 16 else 0
        if halo:
            cls = v0_5.TimeOutputAxisWithHalo if time else v0_5.SpaceOutputAxisWithHalo
            axes.append(cls(id=in_axis.id, halo=int(halo), **extra, size=v0_5.SizeReference(
                tensor_id=v0_5.TensorId("raw"), axis_id=in_axis.id)))
        else:
            cls = v0_5.TimeOutputAxis if time else v0_5.SpaceOutputAxis
            axes.append(cls(id=in_axis.id, size=int(size), **extra))
    axes.append(v0_5.ChannelAxis(channel_names=channel_names))
    return axes


def _channel_names(n: int, reduction: str, labeller: str | None) -> list[str]:
    if reduction == "linear":
        return ["value"] if n == 1 else [f"value{i}" for i in range(n)]
    if reduction == "categorical":
        return [f"class{i}" for i in range(n - 1)] + ["background"]
    if labeller == "region labels":
        return ["membrane"] + [f"region{i}" for i in range(1, n)]
    return [f"bit{i}" for i in range(n)]


def _people(authors: Sequence[str], github_user: str | None) -> dict[str, Any]:
    """authors (and maintainers, with a GitHub user), checked before the long work."""
    from bioimageio.spec.model import v0_5

    people: dict[str, Any] = {"authors": [v0_5.Author(name=a) for a in authors]}
    if github_user:
        people["authors"][0] = v0_5.Author(name=authors[0], github_user=github_user)
        people["maintainers"] = [v0_5.Maintainer(name=authors[0], github_user=github_user)]
    return people


def _weights_descr(weights: dict[str, Path], formats: list[str]):
    """One entry per weight file; the first format is the source the others derive from."""
    import keras
    import tensorflow as tf
    from bioimageio.spec.model import v0_5
    from bioimageio.spec.utils import get_sha256

    entries: dict[str, Any] = {}
    for i, fmt in enumerate(formats):
        common: dict[str, Any] = {"source": weights[fmt], "sha256": get_sha256(weights[fmt])}
        if i > 0:
            common["parent"] = formats[0]
            common["comment"] = f"converted from the {formats[0]} weights by unetsl"
        if fmt == "keras_v3":
            entries[fmt] = v0_5.KerasV3WeightsDescr(
                keras_version=keras.__version__, backend=("tensorflow", tf.__version__),
                **common)
        elif fmt == "keras_hdf5":
            entries[fmt] = v0_5.KerasHdf5WeightsDescr(tensorflow_version=tf.__version__,
                                                      **common)
        else:
            entries[fmt] = v0_5.TensorflowSavedModelBundleWeightsDescr(
                tensorflow_version=tf.__version__, **common)
    return v0_5.WeightsDescr(**entries)


def export_bioimageio(model_path: str | os.PathLike, output: str | os.PathLike, *,
                      sample: str | os.PathLike | None = None,
                      config: str | os.PathLike | None = None,
                      name: str | None = None, description: str | None = None,
                      authors: Sequence[str] = (), github_user: str | None = None,
                      license: str = "CC-BY-4.0",
                      weight_formats: Sequence[str] = WEIGHT_FORMATS,
                      tags: Sequence[str] = ()) -> ExportResult:
    """Write a bioimage.io model package (zip) for ``model_path``: the named steps below.

    sample : an image whose central patch becomes the test input, and whose pixel size and
        unit describe the axes; without it a smooth random tile is used.
    config : the model's JSON config, for its pre-processing; by default ``<name>.json``
        beside the model (``-best``/``-latest`` stripped) when it exists.
    weight_formats : any of WEIGHT_FORMATS; the first is the source the others derive from.
    github_user : GitHub account of the first author, who becomes the maintainer.
    """
    model_path, output = Path(model_path), Path(output)
    formats, people, license_id = _check_request(output, weight_formats, authors, github_user,
                                                 license)
    source = _load_source(model_path, config)
    test = _test_data(source, sample)
    outputs_info, order = _outputs_info(source, test)
    model_name = model_path.name[: -len(model_path.suffix)]
    title = _resource_name(name or f"unetsl {model_name}")
    patch = test.patch
    text = description or (f"U-Net pixel classifier ({'3D' if patch[1] > 1 else '2D'}, patch "
                           f"{patch[1]}x{patch[2]}x{patch[3]}) trained with unetsl.")
    with tempfile.TemporaryDirectory(prefix="unetsl-export-") as tmp:
        folder = Path(tmp)
        ids = [i["id"] for i in outputs_info]
        tensors = _write_tensors(folder, test.raw, test.predictions, ids,
                                 len(outputs_info) > 1)
        _cover(test.raw, test.predictions, folder / "cover.png")
        (folder / "README.md").write_text(
            _readme(title, text, patch, outputs_info, source.settings, model_path.name,
                    source.legacy_note, test.space_ids), encoding="utf-8")
        weights = _write_weights(source.model, folder, formats, ids, order, source.notes)
        formats = [f for f in formats if f in weights]
        model_descr = _described("the model description", lambda: _model_descr(
            title=title, text=text, people=people, license_id=license_id, tags=tags,
            folder=folder, test=test, outputs_info=outputs_info, tensors=tensors,
            weights=_weights_descr(weights, formats), settings=source.settings,
            model_file=model_path.name))
        files, rdf = _package(model_descr, output)
    return ExportResult(path=output, rdf=rdf, files=files, notes=source.notes)


# --- the steps of export_bioimageio ------------------------------------------------------


@dataclass
class _Source:
    """The model to export and what describes it."""

    model: Any
    settings: dict[str, Any]  # pre-processing settings and labeller (export.inputs)
    notes: list[str]
    legacy_note: str | None


@dataclass
class _TestData:
    """The test input (a sample's central patch or a smooth random tile) and the model's
    outputs on it, which the package carries and bioimage.io's tools check."""

    patch: tuple[int, ...]
    image: Any  # the sample image read (axes, pixel size), or None
    space_ids: list[str]
    preprocessing: list
    raw: np.ndarray  # (1, z, y, x, c)
    predictions: list[np.ndarray]


def _check_request(output: Path, weight_formats: Sequence[str], authors: Sequence[str],
                   github_user: str | None, license: str) -> tuple[list[str], dict, Any]:
    """What the user gave, checked before the model is loaded and run: (formats, people,
    license id). Needs bioimageio.spec (one line when it is missing)."""
    if output.suffix.lower() != ".zip":
        raise UnetslError(f"{output}: a bioimage.io package is a .zip file")
    formats = list(dict.fromkeys(weight_formats))
    unknown = [f for f in formats if f not in WEIGHT_FORMATS]
    if unknown or not formats:
        raise UnetslError(f"weight format(s) {', '.join(unknown) or '(none)'} unknown; choose "
                          f"from {', '.join(WEIGHT_FORMATS)}")
    _require_spec()
    authors = [a for a in authors if a.strip()] or [os.environ.get("USER") or "unetsl user"]
    people = _described("the author or GitHub user", lambda: _people(authors, github_user))
    return formats, people, _license(license)


def _load_source(model_path: Path, config: str | os.PathLike | None) -> _Source:
    """The model (the original's converted), and its pre-processing: recorded in the model
    file, else from its config."""
    from unetsl.nets import legacy
    from unetsl.nets.model_files import load_model
    from unetsl.nets.records import INPUT_RECORD, read_record

    model = load_model(model_path)
    notes: list[str] = []
    legacy_note = None
    if legacy.is_legacy_model(model_path):
        info = legacy.read_legacy_file(model_path)
        legacy_note = (f"Converted from a model of the original ActiveUnetSegmentation "
                       f"({legacy.describe_legacy(info)}) to a channels-last Keras 3 model; "
                       "the weights are unchanged.")
        notes.append(legacy_note)
    config_path = Path(config) if config is not None else config_for_model(model_path)
    settings = _config_settings(config_path)
    recorded = model_normalization(model)
    if config is None and read_record(model_path, INPUT_RECORD) is not None:
        settings.update(recorded.settings())  # the model file says how it was trained
        notes.append(f"pre-processing recorded in {model_path.name}: {recorded.describe()}")
    elif config_path is not None and config is None:
        notes.append(f"pre-processing read from {config_path}")
    return _Source(model, settings, notes, legacy_note)


def _test_data(source: _Source, sample: str | os.PathLike | None) -> _TestData:
    """The test tile, its axes, the pre-processing description and the model's outputs."""
    from unetsl.nets.shapes import model_patch_shape

    patch = model_patch_shape(source.model)
    image = None
    if sample is not None:
        tile, image = _sample_tile(Path(sample), patch)
    else:
        tile = _synthetic_tile(patch)
        source.notes.append("no --sample given: the test input is a smooth random tile")
    space_ids = ["time" if image is not None and image.time_as_depth else "z", "y", "x"]
    preprocessing = _described("the pre-processing of the config",
                               lambda: _preprocessing_descr(source.settings, space_ids))
    raw = np.moveaxis(tile, 0, -1)[None].astype(np.float32)  # (1, z, y, x, c)
    predictions = source.model.predict_on_batch(_preprocess(raw, source.settings))
    if not isinstance(predictions, (list, tuple)):
        predictions = [predictions]
    return _TestData(patch, image, space_ids, preprocessing, raw,
                     [np.asarray(p, dtype=np.float32) for p in predictions])


def _outputs_info(source: _Source, test: _TestData) -> tuple[list[dict[str, Any]], list[int]]:
    """Each output's id, name, activation, reduction, channel names and shape, sorted by id
    (``test.predictions`` reordered to match), and that order.

    Tools pair the outputs of the weights with the rdf's outputs by position, and a
    SavedModel signature lists its outputs sorted by name: every format is exported with
    the outputs sorted by id, and described in that order.
    """
    from unetsl.nets.shapes import output_activations

    model = source.model
    multi = len(test.predictions) > 1
    info = []
    for k, (pred, activation) in enumerate(zip(test.predictions, output_activations(model))):
        out_name = model.output_names[k] if multi else "probabilities"
        tensor_id = re.sub(r"[^a-z0-9_]", "_", out_name.lower()).strip("_") or f"output{k}"
        if tensor_id == "raw":
            tensor_id = "output_raw"
        reduction = reduction_for_activation(activation)
        info.append({
            "id": tensor_id, "name": out_name, "activation": activation, "reduction": reduction,
            "channels": _channel_names(pred.shape[-1], reduction, source.settings["labeller"]),
            "shape": tuple(int(s) for s in pred.shape)})
    order = sorted(range(len(info)), key=lambda k: info[k]["id"])
    test.predictions = [test.predictions[k] for k in order]
    return [info[k] for k in order], order


def _model_descr(*, title: str, text: str, people: dict, license_id: Any,
                 tags: Sequence[str], folder: Path, test: _TestData,
                 outputs_info: list[dict[str, Any]], tensors: dict, weights: Any,
                 settings: dict[str, Any], model_file: str) -> Any:
    """The package's description, built from bioimageio.spec's model classes."""
    from bioimageio.spec.model import v0_5

    patch = test.patch
    input_axes = _input_axes(patch, test.image, test.space_ids)
    outputs = [v0_5.OutputTensorDescr(
        id=v0_5.TensorId(info["id"]),
        description=f"{info['activation']} output '{info['name']}'; labels: "
                    f"{REDUCTION_TEXT[info['reduction']]}",
        axes=_output_axes(input_axes, info["shape"], info["channels"], patch),
        test_tensor=_file(tensors[info["id"]][0]),
        sample_tensor=_file(tensors[info["id"]][1]),
        data=v0_5.IntervalOrRatioDataDescr(
            type="float32", **({"range": (0.0, 1.0)} if info["activation"] in (
                "sigmoid", "softmax") else {})),
    ) for info in outputs_info]
    return v0_5.ModelDescr(
        name=title, description=text, **people,
        cite=[v0_5.CiteEntry(text=c["text"], doi=v0_5.Doi(c["doi"])) for c in UNET_CITATIONS],
        license=license_id, documentation=_file(folder / "README.md"),
        covers=[_file(folder / "cover.png")],
        tags=sorted({"unet", "unetsl", "segmentation", "tensorflow", "keras",
                     "3d" if patch[1] > 1 and test.space_ids[0] == "z" else "2d",
                     *[t.lower() for t in tags]}),
        git_repo=v0_5.HttpUrl(GIT_REPO),
        timestamp=v0_5.Datetime(datetime.datetime.now(datetime.timezone.utc)
                                .replace(microsecond=0)),
        inputs=[v0_5.InputTensorDescr(
            id=v0_5.TensorId("raw"), description="image intensities, channels last",
            axes=input_axes, test_tensor=_file(tensors["raw"][0]),
            sample_tensor=_file(tensors["raw"][1]),
            data=v0_5.IntervalOrRatioDataDescr(type="float32"),
            preprocessing=test.preprocessing)],
        outputs=outputs,
        weights=weights,
        config=v0_5.Config(unetsl={
            "version": unetsl.__version__,
            "source model": model_file,
            "patch (c, z, y, x)": [int(p) for p in patch],
            "reductions": {i["id"]: i["reduction"] for i in outputs_info},
            "normalize samples": settings["normalize samples"],
            "normalization percentiles": settings["normalization percentiles"],
        }),
    )


def _package(model_descr: Any, output: Path) -> tuple[list[str], dict]:
    """Save the package atomically through bioimageio.spec: (its files, its rdf.yaml)."""
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.utils import read_yaml

    with atomic_path(output) as tmp_zip, _context():
        try:
            save_bioimageio_package(model_descr, output_path=tmp_zip,
                                    compression_level=ZIP_LEVEL)
        except ValueError as err:  # the library re-reads the zip and refused it
            raise UnetslError(f"{output}: bioimageio.spec refused the package: "
                              f"{str(err).splitlines()[0]}") from None
        with zipfile.ZipFile(tmp_zip) as zf:
            files = sorted(zf.namelist())
            # the library's YAML 1.2 reader: PyYAML (1.1) reads 1e-06 as a string
            rdf = json.loads(json.dumps(read_yaml(zipfile.Path(zf, "rdf.yaml"))))
    return files, rdf
