"""Model files: create from a config, save atomically, load safely (the original's .h5 too),
describe, resize."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import h5py
import keras
from keras import layers

from unetsl.atomic import atomic_path, check_writable
from unetsl.config.model_config import Config
from unetsl.data.normalize import attach_normalization, model_normalization
from unetsl.errors import UnetslError
from unetsl.nets import legacy
from unetsl.nets import losses as _losses  # noqa: F401  (registers the losses for loading)
from unetsl.nets.precision import as_float32  # a checkpoint of a mixed-precision run
from unetsl.nets.records import INPUT_RECORD, file_normalization, write_record
from unetsl.nets.shapes import model_patch_shape, output_activations
from unetsl.nets.unet import build_model

# Model files
# --------------------------------------------------------------------------------------------


_MODEL_SUFFIXES = (".h5", ".hdf5", ".keras")


def _check_suffix(path: Path) -> None:
    if path.suffix.lower() not in _MODEL_SUFFIXES:
        raise UnetslError(
            f"model file {str(path)!r}: suffix must be one of {', '.join(_MODEL_SUFFIXES)}"
        )


def save_model(model: keras.Model, path: str | os.PathLike) -> None:
    """Write ``model`` atomically; ``.h5``/``.hdf5`` gives legacy HDF5, ``.keras`` the zip format.

    A compiled model keeps its loss (registered classes reload without custom_objects), and
    the input normalisation recorded on it (:func:`unetsl.data.normalize.attach_normalization`)
    is stored in the file, so that every later prediction applies it.
    """
    path = Path(path)
    _check_suffix(path)
    # Keras' legacy HDF5 writer pops "optimizer" from the model's live compile config, so a
    # later .keras save would lose the optimiser: save from a copy and restore it.
    compile_config = getattr(model, "_compile_config", None)
    saved = dict(compile_config.config) if compile_config is not None else None
    try:
        with atomic_path(path) as tmp:
            model.save(tmp, overwrite=True)
            normalization = model_normalization(model)
            if normalization is not None:
                write_record(tmp, INPUT_RECORD, normalization.to_json())
    finally:
        if saved is not None:
            compile_config.config = saved


def load_model(path: str | os.PathLike, compile: bool = False) -> keras.Model:
    """Load a model written by :func:`save_model` (safe mode: no arbitrary code).

    The unetsl losses are registered on import of this module, so compiled models reload
    with their loss when ``compile`` is true. The model's input normalisation (its record,
    else its training config's settings) is attached to it (``model_normalization``).
    """
    path = Path(path)
    if path.is_dir():
        raise UnetslError(f"model file {str(path)!r} is a folder, expected a .h5 or .keras file")
    if not path.is_file():
        raise UnetslError(f"model file {str(path)!r} does not exist")
    _check_suffix(path)
    if path.suffix.lower() == ".keras" and not zipfile.is_zipfile(path):
        raise UnetslError(f"model file {str(path)!r} cannot be loaded: not a .keras zip archive")
    if path.suffix.lower() != ".keras" and not h5py.is_hdf5(path):
        raise UnetslError(f"model file {str(path)!r} cannot be loaded: not an HDF5 file")
    normalization = file_normalization(path)
    if legacy.is_legacy_model(path):  # written by the original (Keras 2, channels-first)
        return attach_normalization(legacy.load_legacy_model(path, compile=compile),
                                    normalization)
    try:
        model = keras.saving.load_model(path, compile=compile, safe_mode=True)
    except Exception as exc:  # h5py, zipfile and Keras raise many types for a bad file
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if len(reason) > 200:
            reason = reason[:200] + "..."
        raise UnetslError(f"model file {str(path)!r} cannot be loaded: {reason}") from exc

    return attach_normalization(as_float32(model), normalization)


build_model_from_config = build_model
"""The old name of :func:`unetsl.nets.unet.build_model` (the benchmarks call it)."""


def create_model_files(config: Config, *, write_config: bool = True) -> keras.Model:
    """create_model's one path, for every layout: check the config, build its model, then
    write ``NAME.json`` (when ``write_config``; an existing one is backed up as
    ``NAME-json.bak`` first) and ``NAME.h5``, each atomically. Nothing is written unless
    every file can be; returns the model."""
    config.validate()
    path = config.path
    if path is None:
        raise UnetslError("config has no file name to save to")
    check_writable([path, config.model_path])  # nothing is written unless all can be
    model = build_model(config)
    if write_config:
        config.save(path, backup=True, text=config.created_json())
    save_model(model, config.model_path)
    return model


def describe_model(model: keras.Model) -> str:
    """A one-screen summary: input, each output with its activation, parameter count."""
    c, z, y, x = model_patch_shape(model)
    lines = [f"input:  (c, z, y, x) = ({c}, {z}, {y}, {x})"]
    for name, tensor, activation in zip(model.output_names, model.outputs,
                                        output_activations(model)):
        _, oz, oy, ox, n = tensor.shape
        lines.append(f"output: {name} (n, z, y, x) = ({n}, {oz}, {oy}, {ox}), {activation}")
    lines.append(f"parameters: {model.count_params():,}")
    return "\n".join(lines)


def _resized_target(old_in: Sequence[int], old_target: Sequence[int],
                    new_in: Sequence[int]) -> tuple[int, ...]:
    """The target shape of a Reshape that only adds or drops unit axes, at a new input size."""
    kept = [i for i, s in enumerate(old_in) if s != 1]
    if [old_in[i] for i in kept] != [s for s in old_target if s != 1]:
        raise UnetslError(f"a Reshape from {tuple(old_in)} to {tuple(old_target)} does more "
                          "than add or drop unit axes")
    if any(new_in[i] == 1 for i in kept) or any(
            s != 1 for i, s in enumerate(new_in) if i not in kept):
        raise UnetslError(f"a Reshape from {tuple(old_in)} cannot take {tuple(new_in)}")
    sizes = iter(new_in[i] for i in kept)
    return tuple(next(sizes) if s != 1 else 1 for s in old_target)


def with_input_patch(model: keras.Model, patch: Sequence[int]) -> keras.Model:
    """The same fully convolutional network for a larger (z, y, x) input patch.

    Prediction with tiles larger than the training patch needs fewer tiles and less overlap.
    The new model shares the layers (and so the weights) of ``model``; the Reshape layers of
    2-D U-Nets get new target shapes. A network whose layers depend on the input size
    (Dense, Flatten, ...) raises UnetslError.
    """
    c, *old = model_patch_shape(model)
    patch = tuple(int(p) for p in patch)
    if patch == tuple(old):
        return model
    if not isinstance(model, keras.Model) or len(model.inputs) != 1:
        raise UnetslError(f"model {model.name!r}: only single-input models can be resized")

    def call(layer, *args, **kwargs):
        if isinstance(layer, layers.Reshape):
            x = args[0]
            target = _resized_target(tuple(layer.input.shape[1:]), layer.target_shape,
                                     tuple(x.shape[1:]))
            return layers.Reshape(target, name=layer.name)(x)
        if isinstance(layer, (layers.Dense, layers.Flatten)):
            raise UnetslError(f"layer {layer.name!r} ({type(layer).__name__}) depends on the "
                              "input size")
        return layer(*args, **kwargs)

    inputs = keras.Input(shape=(*patch, c), batch_size=model.inputs[0].shape[0],
                         dtype=model.inputs[0].dtype, name=model.inputs[0].name.split(":")[0])
    try:
        structure = model.input  # a single tensor, or a one-element list (cerberus models)
        if isinstance(structure, (list, tuple)):
            inputs = type(structure)([inputs])
        resized = keras.models.clone_model(model, input_tensors=inputs,
                                           clone_function=lambda layer: layer,
                                           call_function=call)
    except UnetslError:
        raise
    except (ValueError, TypeError) as exc:
        raise UnetslError(f"model {model.name!r} cannot take a {patch} patch: "
                          f"{str(exc).splitlines()[0]}") from None
    for out, new in zip(model.outputs, resized.outputs):
        factors = [p / o for p, o in zip(patch, old)]
        want = [round(s * f) for s, f in zip(out.shape[1:4], factors)]
        if list(new.shape[1:4]) != want:
            raise UnetslError(f"model {model.name!r}: an output of shape {tuple(out.shape)} "
                              f"becomes {tuple(new.shape)} for a {patch} patch")
    return resized
