"""Export a trained model as a BioImage Model Zoo (bioimage.io) model package.

A package is a zip file with an ``rdf.yaml`` description (format 0.5 of the bioimage.io
model spec) and the files it names: the weights (Keras 3 ``.keras``, Keras HDF5 ``.h5`` and a
zipped TensorFlow SavedModel, so that Python tools, ilastik, napari and Fiji's deepImageJ all
find a format they run), a test input and the output unetsl computed for it (consumers check
they reproduce it), a cover image and a README. The description says the axes of the
tensors (channels-last: batch, z or time, y, x, channel), the pixel size of the sample image,
the pre-processing the model was trained with ("normalize samples", "normalization
percentiles" of its config) and how unetsl turns the probabilities into labels.

The YAML is written directly; the official ``bioimageio.spec`` package is only needed to
validate a package (:func:`validate_package`, ``pip install unetsl[bioimageio]``).
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import yaml

import unetsl
from unetsl.atomic import atomic_path
from unetsl.errors import UnetslError
from unetsl.export.inputs import (
    _config_settings,
    _preprocess,
    _preprocessing_rdf,
    _sample_tile,
    _synthetic_tile,
)
from unetsl.export.package_files import _cover, _sha256, _write_weights

__all__ = ["ExportResult", "WEIGHT_FORMATS", "export_bioimageio", "validate_package"]

log = logging.getLogger("unetsl")

#: The format version written when ``bioimageio.spec`` is not installed to say the latest.
FALLBACK_FORMAT_VERSION = "0.5.14"
#: Weight formats that suit a Keras / TensorFlow model, the first one being the source.
WEIGHT_FORMATS = ("keras_v3", "keras_hdf5", "tensorflow_saved_model_bundle")

UNET_CITATIONS = [
    {"text": "Ronneberger, O., Fischer, P., Brox, T. U-Net: Convolutional Networks for "
             "Biomedical Image Segmentation. MICCAI 2015.",
     "doi": "10.1007/978-3-319-24574-4_28"},
    {"text": "Cicek, O., Abdulkadir, A., Lienkamp, S. S., Brox, T., Ronneberger, O. 3D U-Net: "
             "Learning Dense Volumetric Segmentation from Sparse Annotation. MICCAI 2016.",
     "doi": "10.1007/978-3-319-46723-8_49"},
]

_UNITS = {
    "um": "micrometer", "µm": "micrometer", "μm": "micrometer", "micron": "micrometer",
    "microns": "micrometer", "micrometer": "micrometer", "micrometre": "micrometer",
    "nm": "nanometer", "nanometer": "nanometer", "mm": "millimeter", "millimeter": "millimeter",
    "cm": "centimeter", "m": "meter", "meter": "meter", "a": "angstrom", "å": "angstrom",
    "angstrom": "angstrom", "pm": "picometer",
}


@dataclass
class ExportResult:
    """What :func:`export_bioimageio` wrote."""

    path: Path
    rdf: dict
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# The description (its inputs: unetsl.export.inputs; its files: unetsl.export.package_files)
# --------------------------------------------------------------------------------------------


def _format_version() -> str:
    try:
        from bioimageio.spec.model.v0_5 import ModelDescr
    except ImportError:
        return FALLBACK_FORMAT_VERSION
    return str(ModelDescr.implemented_format_version)


def _resource_name(text: str) -> str:
    """bioimage.io names: letters, digits, spaces, _ - ( ); at most 128 characters."""
    name = re.sub(r"[^A-Za-z0-9 _\-()]", "-", text).strip(" -_") or "unetsl model"
    return name[:128]


def _space_unit(unit: str) -> str | None:
    return _UNITS.get(unit.strip().lower()) if unit else None


def _input_axes(patch, image, space_ids: list[str]) -> list[dict]:
    c, z, y, x = patch
    spacing = image.spacing if image is not None else (1.0, 1.0, 1.0)
    unit = _space_unit(image.unit) if image is not None else None
    axes: list[dict] = [{"type": "batch"}]
    for axis_id, size, scale in zip(space_ids, (z, y, x), spacing):
        if axis_id == "time":
            axes.append({"type": "time", "id": "time", "size": int(size)})
            continue
        entry: dict[str, Any] = {"type": "space", "id": axis_id, "size": int(size)}
        if unit is not None:
            entry["unit"] = unit
            entry["scale"] = float(scale)
        axes.append(entry)
    axes.append({"type": "channel", "channel_names": [f"channel{i}" for i in range(c)]})
    return axes


def _output_axes(input_axes: list[dict], out_shape: tuple[int, ...], channel_names: list[str],
                 patch: tuple[int, int, int, int]) -> list[dict]:
    """(batch, z, y, x, n) axes; full-resolution axes get a halo for tiled use."""
    axes: list[dict] = [{"type": "batch"}]
    for in_axis, size, p in zip(input_axes[1:4], out_shape[1:4], patch[1:]):
        entry = {k: v for k, v in in_axis.items() if k not in ("size",)}
        factor = p / size
        if entry.get("scale") is not None:
            entry["scale"] = float(entry["scale"]) * factor
        elif factor != 1:
            entry["scale"] = float(factor)
        entry["size"] = int(size)
        halo = size // 8 if size == p and size >= 16 else 0
        if halo:
            entry["size"] = {"tensor_id": "raw", "axis_id": in_axis["id"]}
            entry["halo"] = int(halo)
        axes.append(entry)
    axes.append({"type": "channel", "channel_names": channel_names})
    return axes


def _channel_names(n: int, reduction: str, labeller: str | None) -> list[str]:
    if reduction == "linear":
        return ["value"] if n == 1 else [f"value{i}" for i in range(n)]
    if reduction == "categorical":
        return [f"class{i}" for i in range(n - 1)] + ["background"]
    if labeller == "region labels":
        return ["membrane"] + [f"region{i}" for i in range(1, n)]
    return [f"bit{i}" for i in range(n)]


_REDUCTION_TEXT = {
    "multiclass": "channel k above 0.5 sets bit k of the label (label = sum of 2^k)",
    "categorical": "the arg-max channel k gives label 2^k; the last channel is the background "
                   "(label 0)",
    "linear": "the value itself (e.g. a distance)",
}


def _readme(name: str, description: str, patch, outputs_info: list[dict], settings: dict,
            source_model: str, legacy_note: str | None, space_ids: list[str]) -> str:
    c, z, y, x = patch
    first = space_ids[0]
    lines = [
        f"# {name}", "", description, "",
        "A U-Net pixel classifier trained with [unetsl](https://github.com/FrancisCrickInstitute/"
        "ActiveUnetSegmentation) (the successor of ActiveUnetSegmentation), exported by "
        f"unetsl {unetsl.__version__} from `{source_model}`.", "",
        "## Input", "",
        f"One tensor `raw` of shape (batch, {first}, y, x, channel) = (b, {z}, {y}, {x}, {c}), "
        "channels last, float32 intensities as in the training images.",
    ]
    if space_ids[0] == "time":
        lines.append(f"The {z} planes along the first axis are consecutive time points of a 2D "
                     "time series (the model sees frames as depth).")
    pre = []
    if settings["normalization percentiles"] is not None:
        lo, hi = settings["normalization percentiles"]
        pre.append(f"percentile scaling per channel ({lo}th -> 0, {hi}th -> 1; unetsl applies "
                   "it to the whole image, bioimage.io tools to each tile)")
    if settings["normalize samples"]:
        pre.append("z-score per tile and channel (\"normalize samples\")")
    lines += ["", "Pre-processing: " + ("; then ".join(pre) if pre else
                                        "none (raw intensities, converted to float32)") + "."]
    lines += ["", "## Outputs", ""]
    for info in outputs_info:
        lines.append(f"- `{info['id']}`: {info['activation']} output of shape {info['shape']} "
                     f"(batch, {first}, y, x, channel); to labels: "
                     f"{_REDUCTION_TEXT[info['reduction']]}.")
    lines += [
        "", "Tiles overlap: crop the halo declared in rdf.yaml (or blend overlapping tiles, as "
        "`predict_image` does) to avoid seams from the zero padding at tile edges.", "",
        "## Use with unetsl", "",
        "    predict_image weights.h5 image.tif prediction.tif -b", "",
        "## Validation", "",
        "The package carries a test input (`test_input.npy`) and the output unetsl computed for "
        "it (`test_output*.npy`); `bioimageio test` runs the model on the input and compares. "
        "To validate the model on unseen data, predict annotated images that were not used "
        "for training and compare the labels with the annotation (e.g. Jaccard index of the "
        "regions between membranes, as `compare_prediction_truth` does).",
    ]
    if legacy_note:
        lines += ["", "## Provenance", "", legacy_note]
    lines += ["", "## References", ""]
    lines += [f"- {c['text']} doi:{c['doi']}" for c in UNET_CITATIONS]
    return "\n".join(lines) + "\n"


def export_bioimageio(model_path: str | os.PathLike, output: str | os.PathLike, *,
                      sample: str | os.PathLike | None = None,
                      config: str | os.PathLike | None = None,
                      name: str | None = None, description: str | None = None,
                      authors: Sequence[str] = (), github_user: str | None = None,
                      license: str = "CC-BY-4.0",
                      weight_formats: Sequence[str] = WEIGHT_FORMATS,
                      tags: Sequence[str] = ()) -> ExportResult:
    """Write a bioimage.io model package (zip) for ``model_path``.

    sample : an image whose central patch becomes the test input, and whose pixel size and
        unit describe the axes; without it a smooth random tile is used.
    config : the model's JSON config, for its pre-processing; by default ``<name>.json``
        beside the model (``-best``/``-latest`` stripped) when it exists.
    weight_formats : any of WEIGHT_FORMATS; the first is the source the others derive from.
    github_user : GitHub account of the first author, who becomes the maintainer.
    """
    from unetsl.config.model_config import config_for_model
    from unetsl.data.normalize import model_normalization
    from unetsl.nets.model_files import load_model
    from unetsl.nets.records import INPUT_RECORD, read_record
    from unetsl.nets.shapes import model_patch_shape, output_activations
    from unetsl.predict.reduce import reduction_for_activation

    model_path = Path(model_path)
    output = Path(output)
    if output.suffix.lower() != ".zip":
        raise UnetslError(f"{output}: a bioimage.io package is a .zip file")
    formats = list(dict.fromkeys(weight_formats))
    unknown = [f for f in formats if f not in WEIGHT_FORMATS]
    if unknown or not formats:
        raise UnetslError(f"weight format(s) {', '.join(unknown) or '(none)'} unknown; choose "
                          f"from {', '.join(WEIGHT_FORMATS)}")
    model = load_model(model_path)
    notes: list[str] = []
    legacy_note = None
    from unetsl.nets import legacy
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

    patch = model_patch_shape(model)
    image = None
    if sample is not None:
        tile, image = _sample_tile(Path(sample), patch)
    else:
        tile = _synthetic_tile(patch)
        notes.append("no --sample given: the test input is a smooth random tile")
    space_ids = ["time" if image is not None and image.time_as_depth else "z", "y", "x"]
    raw = np.moveaxis(tile, 0, -1)[None].astype(np.float32)  # (1, z, y, x, c)
    predictions = model.predict_on_batch(_preprocess(raw, settings))
    if not isinstance(predictions, (list, tuple)):
        predictions = [predictions]
    predictions = [np.asarray(p, dtype=np.float32) for p in predictions]
    activations = output_activations(model)

    model_name = model_path.name[: -len(model_path.suffix)]
    title = _resource_name(name or f"unetsl {model_name}")
    text = description or (f"U-Net pixel classifier ({'3D' if patch[1] > 1 else '2D'}, patch "
                            f"{patch[1]}x{patch[2]}x{patch[3]}) trained with unetsl.")
    authors = [a for a in authors if a.strip()] or [os.environ.get("USER") or "unetsl user"]

    authors_rdf: list[dict[str, str]] = [{"name": a} for a in authors]
    if github_user:
        authors_rdf[0]["github_user"] = github_user
    input_axes = _input_axes(patch, image, space_ids)
    outputs_rdf = []
    outputs_info = []
    multi = len(predictions) > 1
    for k, (pred, activation) in enumerate(zip(predictions, activations)):
        out_name = model.output_names[k] if multi else "probabilities"
        tensor_id = re.sub(r"[^a-z0-9_]", "_", out_name.lower()).strip("_") or f"output{k}"
        if tensor_id == "raw":
            tensor_id = "output_raw"
        reduction = reduction_for_activation(activation)
        channels = _channel_names(pred.shape[-1], reduction, settings["labeller"])
        data: dict[str, Any] = {"type": "float32"}
        if activation in ("sigmoid", "softmax"):
            data["range"] = [0.0, 1.0]
        outputs_rdf.append({
            "id": tensor_id,
            "description": f"{activation} output '{out_name}'; labels: "
                           f"{_REDUCTION_TEXT[reduction]}",
            "axes": _output_axes(input_axes, pred.shape, channels, patch),
            "test_tensor": {"source": f"test_output_{tensor_id}.npy" if multi
                            else "test_output.npy"},
            "sample_tensor": {"source": f"sample_output_{tensor_id}.tif" if multi
                              else "sample_output.tif"},
            "data": data,
        })
        outputs_info.append({"id": tensor_id, "activation": activation, "reduction": reduction,
                             "shape": tuple(int(s) for s in pred.shape)})

    # Tools pair the outputs of the weights with the rdf's outputs by position, and a
    # SavedModel signature lists its outputs sorted by name: export every format with the
    # outputs sorted by id, and describe them in that order.
    order = sorted(range(len(outputs_rdf)), key=lambda k: outputs_rdf[k]["id"])
    outputs_rdf = [outputs_rdf[k] for k in order]
    outputs_info = [outputs_info[k] for k in order]
    predictions = [predictions[k] for k in order]

    with tempfile.TemporaryDirectory(prefix="unetsl-export-") as tmp:
        folder = Path(tmp)
        np.save(folder / "test_input.npy", raw)
        tifffile.imwrite(folder / "sample_input.tif", raw.squeeze())
        for entry, pred in zip(outputs_rdf, predictions):
            np.save(folder / entry["test_tensor"]["source"], pred)
            tifffile.imwrite(folder / entry["sample_tensor"]["source"], pred.squeeze())
        _cover(raw, predictions, folder / "cover.png")
        (folder / "README.md").write_text(
            _readme(title, text, patch, outputs_info, settings, model_path.name, legacy_note,
                    space_ids), encoding="utf-8")
        weights = _write_weights(model, folder, formats, [i["id"] for i in outputs_info],
                                 order, notes)
        formats = [f for f in formats if f in weights]

        import keras
        import tensorflow as tf

        weights_rdf: dict[str, dict] = {}
        for i, fmt in enumerate(formats):
            path = weights[fmt]
            entry: dict[str, Any] = {"source": path.name, "sha256": _sha256(path)}
            if fmt == "keras_v3":
                entry["keras_version"] = keras.__version__
                entry["backend"] = ["tensorflow", tf.__version__]
            else:
                entry["tensorflow_version"] = tf.__version__
            if i > 0:
                entry["parent"] = formats[0]
                entry["comment"] = f"converted from the {formats[0]} weights by unetsl"
            weights_rdf[fmt] = entry

        def file_entry(name: str) -> dict[str, str]:
            return {"source": name, "sha256": _sha256(folder / name)}

        for entry in outputs_rdf:
            for key in ("test_tensor", "sample_tensor"):
                entry[key] = file_entry(entry[key]["source"])
        rdf: dict[str, Any] = {
            "format_version": _format_version(),
            "type": "model",
            "name": title,
            "description": text,
            "authors": authors_rdf,
            "cite": UNET_CITATIONS,
            "license": license,
            "documentation": file_entry("README.md"),
            "covers": [file_entry("cover.png")],
            "tags": sorted({"unet", "unetsl", "segmentation", "tensorflow", "keras",
                            "3d" if patch[1] > 1 and space_ids[0] == "z" else "2d",
                            *[t.lower() for t in tags]}),
            "git_repo": "https://github.com/FrancisCrickInstitute/ActiveUnetSegmentation",
            "timestamp": datetime.datetime.now(datetime.timezone.utc)
            .replace(microsecond=0).isoformat(),
            "inputs": [{
                "id": "raw",
                "description": "image intensities, channels last",
                "axes": input_axes,
                "test_tensor": file_entry("test_input.npy"),
                "sample_tensor": file_entry("sample_input.tif"),
                "data": {"type": "float32"},
                "preprocessing": _preprocessing_rdf(settings, space_ids),
            }],
            "outputs": outputs_rdf,
            **({"maintainers": [{"name": authors[0], "github_user": github_user}]}
               if github_user else {}),
            "weights": weights_rdf,
            "config": {"unetsl": {
                "version": unetsl.__version__,
                "source model": model_path.name,
                "patch (c, z, y, x)": [int(p) for p in patch],
                "reductions": {i["id"]: i["reduction"] for i in outputs_info},
                "normalize samples": settings["normalize samples"],
                "normalization percentiles": settings["normalization percentiles"],
            }},
        }
        (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False,
                                                        allow_unicode=True), encoding="utf-8")
        files = sorted(p.name for p in folder.iterdir())
        with atomic_path(output) as tmp_zip:
            with zipfile.ZipFile(tmp_zip, "w", zipfile.ZIP_DEFLATED) as zf:
                zf.write(folder / "rdf.yaml", "rdf.yaml")
                for fname in files:
                    if fname != "rdf.yaml":
                        zf.write(folder / fname, fname)
    return ExportResult(path=output, rdf=rdf, files=files, notes=notes)


def validate_package(path: str | os.PathLike) -> tuple[str, str, list[str]]:
    """Validate with the official bioimage.io packages: (status, tool, messages).

    With ``bioimageio.core`` installed the model is also run on its test input with every
    weight format (status "passed" or "failed"); with ``bioimageio.spec`` alone the
    description and files are checked (status "valid-format" or "failed"). UnetslError when
    neither is installed (``pip install 'unetsl[bioimageio]'``).
    """
    try:
        from bioimageio.core import test_model

        def run(source):
            return test_model(source)

        tool = "bioimageio.core test"
    except ImportError:
        try:
            from bioimageio.spec import load_description
        except ImportError:
            raise UnetslError("validation needs the bioimageio.spec package: pip install "
                              "'unetsl[bioimageio]'") from None

        def run(source):
            return load_description(source, perform_io_checks=True).validation_summary

        tool = "bioimageio.spec"

    source = Path(path).resolve()
    # bioimageio.core unpacks TensorFlow weights into the working directory: run it in a
    # temporary one so that nothing is left beside the user's files.
    previous = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="unetsl-validate-") as scratch:
        os.chdir(scratch)
        try:
            summary = run(source)
        finally:
            os.chdir(previous)
    messages = []
    offline_hint = ("(bioimageio.spec looks GitHub users up online; without a network the "
                    "check fails: export without --github-user, or validate online)")
    for detail in summary.details:
        for err in detail.errors:
            messages.append(located("error", source, err.loc, err.msg))
            if "Name or service not known" in err.msg or "connect" in err.msg.lower():
                messages.append(offline_hint)
        for warning in detail.warnings:
            messages.append(located("warning", source, warning.loc, warning.msg))
    return str(summary.status), tool, messages


def located(kind: str, package: str | os.PathLike, loc: Sequence[Any], message: str) -> str:
    """One line ``kind: <package>/rdf.yaml[ field.path]: message``: the validator gives an
    empty location for whole-description findings, which printed as ``warning: : ...``."""
    field = ".".join(str(p) for p in loc)
    where = f"{Path(package).name}/rdf.yaml" + (f" {field}" if field else "")
    return _short(f"{kind}: {where}: {message}")


def _short(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= 240 else line[:237] + "..."
