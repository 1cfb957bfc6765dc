"""Files of a bioimage.io package: weights in each format, cover image, checksums."""

from __future__ import annotations

import hashlib
import logging
import shutil
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger("unetsl")


# Files
# --------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


# --------------------------------------------------------------------------------------------
