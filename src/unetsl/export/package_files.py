"""Files of a bioimage.io package that bioimageio.spec does not write: the weights in each
format, the test and sample tensors, the cover image and the README.

The description (rdf.yaml), the checksums and the zip are the library's
(unetsl.export.bioimageio); these files are ours because only unetsl knows the model (a
Keras model has to be cloned, re-ordered and exported three ways), the tensors it computed
and what to say about them.
"""

from __future__ import annotations

import logging
import shutil
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile

import unetsl

log = logging.getLogger("unetsl")

UNET_CITATIONS = [
    {"text": "Ronneberger, O., Fischer, P., Brox, T. U-Net: Convolutional Networks for "
             "Biomedical Image Segmentation. MICCAI 2015.",
     "doi": "10.1007/978-3-319-24574-4_28"},
    {"text": "Cicek, O., Abdulkadir, A., Lienkamp, S. S., Brox, T., Ronneberger, O. 3D U-Net: "
             "Learning Dense Volumetric Segmentation from Sparse Annotation. MICCAI 2016.",
     "doi": "10.1007/978-3-319-46723-8_49"},
]

REDUCTION_TEXT = {
    "multiclass": "channel k above 0.5 sets bit k of the label (label = sum of 2^k)",
    "categorical": "the arg-max channel k gives label 2^k; the last channel is the background "
                   "(label 0)",
    "linear": "the value itself (e.g. a distance)",
}


# Files
# --------------------------------------------------------------------------------------------


def _write_tensors(folder: Path, raw: np.ndarray, predictions: Sequence[np.ndarray],
                   output_ids: Sequence[str], multi: bool) -> dict[str, tuple[Path, Path]]:
    """Test (.npy, for consumers to reproduce) and sample (.tif, to look at) tensors:
    {tensor id: (test path, sample path)}, the input under "raw"."""
    from bioimageio.spec.utils import save_array

    paths = {"raw": (folder / "test_input.npy", folder / "sample_input.tif")}
    save_array(paths["raw"][0], raw)
    tifffile.imwrite(paths["raw"][1], raw.squeeze())
    for tensor_id, pred in zip(output_ids, predictions):
        suffix = f"_{tensor_id}" if multi else ""
        paths[tensor_id] = (folder / f"test_output{suffix}.npy",
                            folder / f"sample_output{suffix}.tif")
        save_array(paths[tensor_id][0], pred)
        tifffile.imwrite(paths[tensor_id][1], pred.squeeze())
    return paths


def _plain_copy(model, order: Sequence[int]):
    """The model without compile state (any Keras 3 loads it without unetsl), its outputs
    in ``order``."""
    import keras

    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    if len(clone.outputs) == 1:
        return clone
    return keras.Model(clone.inputs, [clone.outputs[k] for k in order], name=clone.name)


def _write_weights(model, folder: Path, formats: Sequence[str], output_ids: Sequence[str],
                   order: Sequence[int], notes: list[str]) -> dict[str, Path]:
    """Weight files with the outputs in ``order``, named ``output_ids`` in the SavedModel.

    The SavedModel's "serve" signature returns {output id: tensor}; tools read its values in
    the signature's order, which must be the order of the rdf outputs (checked).
    """
    files: dict[str, Path] = {}
    plain = _plain_copy(model, order)
    if "keras_v3" in formats:
        files["keras_v3"] = folder / "weights.keras"
        plain.save(files["keras_v3"])
    if "keras_hdf5" in formats:
        files["keras_hdf5"] = folder / "weights.h5"
        plain.save(files["keras_hdf5"])
    if "tensorflow_saved_model_bundle" in formats:
        import keras
        import tensorflow as tf

        saved = folder / "saved_model"
        archive = keras.export.ExportArchive()
        archive.track(plain)

        def serve(x):
            outputs = plain(x, training=False)
            if not isinstance(outputs, (list, tuple)):
                outputs = [outputs]
            return dict(zip(output_ids, outputs))

        spec = tf.TensorSpec((None, *plain.inputs[0].shape[1:]), tf.float32, name="raw")
        archive.add_endpoint("serve", serve, input_signature=[spec])
        archive.write_out(str(saved), verbose=False)
        signature = tf.saved_model.load(str(saved)).signatures["serve"]
        if list(signature.structured_outputs) != list(output_ids):
            notes.append("the TensorFlow SavedModel lists its outputs in another order than "
                         "the model; left out of the package")
        else:
            bundle = folder / "tf-saved-model.zip"
            with zipfile.ZipFile(bundle, "w", zipfile.ZIP_DEFLATED) as zf:
                for path in sorted(saved.rglob("*")):
                    if path.is_file():
                        zf.write(path, path.relative_to(saved).as_posix())
            files["tensorflow_saved_model_bundle"] = bundle
        shutil.rmtree(saved)
    return files


def _cover(raw: np.ndarray, outputs: list[np.ndarray], path: Path) -> None:
    """Input slice | first output channel of each output, 2:1 or wider, as a PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import image as mpimg

    def middle(a: np.ndarray) -> np.ndarray:  # (1, z, y, x, c) -> (y, x) of channel 0
        plane = a[0, a.shape[1] // 2, :, :, 0].astype(np.float32)
        lo, hi = np.percentile(plane, [0.5, 99.5])
        return np.clip((plane - lo) / (hi - lo if hi > lo else 1.0), 0, 1)

    panels = [middle(raw)]
    size = panels[0].shape
    for out in outputs:
        plane = middle(out)
        if plane.shape != size:  # a low-resolution head: repeat up to the input size
            reps = (max(1, size[0] // plane.shape[0]), max(1, size[1] // plane.shape[1]))
            plane = np.kron(plane, np.ones(reps))[: size[0], : size[1]]
            plane = np.pad(plane, [(0, size[0] - plane.shape[0]), (0, size[1] - plane.shape[1])])
        panels.append(plane)
    if len(panels) < 2:
        panels.append(panels[0])
    picture = np.concatenate(panels, axis=1)
    scale = max(1, 256 // size[0])
    picture = np.kron(picture, np.ones((scale, scale)))
    mpimg.imsave(path, picture, cmap="gray", vmin=0.0, vmax=1.0)


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
                     f"{REDUCTION_TEXT[info['reduction']]}.")
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
