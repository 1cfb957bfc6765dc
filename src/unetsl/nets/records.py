"""Small JSON records stored inside model files, beside what Keras writes.

A ``.h5`` file keeps each record as an HDF5 attribute of its root, a ``.keras`` zip as an
extra member; Keras ignores both when loading, and the original's files simply have none.
unetsl keeps two: how the model's inputs are normalised (written with every model file, see
:mod:`unetsl.data.normalize`) and the training state of checkpoints
(:mod:`unetsl.training.checkpoints`). This module needs h5py and zipfile only, not Keras.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import h5py

from unetsl.config.model_config import config_for_model, layout_settings
from unetsl.data.normalize import MODEL_ATTRIBUTE, InputNormalization
from unetsl.errors import UnetslError

__all__ = ["INPUT_RECORD", "STATE_RECORD", "file_normalization", "never_trained", "read_record",
           "write_record"]


def _is_keras_zip(path: Path) -> bool:
    return path.suffix.lower() == ".keras"


def write_record(path: str | os.PathLike, name: str, text: str) -> None:
    """Add (or replace) record ``name`` in a model file that is not yet in its final place."""
    path = Path(path)
    if _is_keras_zip(path):
        with zipfile.ZipFile(path, "a") as archive:
            if f"{name}.json" in archive.namelist():  # a zip cannot replace a member
                raise UnetslError(f"{path}: already holds a {name} record")
            archive.writestr(f"{name}.json", text)
    else:
        with h5py.File(path, "a") as f:
            f.attrs[name] = text


def read_record(path: str | os.PathLike, name: str) -> str | None:
    """The text of record ``name``, or None when the file has none (the original's files).

    An unreadable file is a one-line UnetslError naming it.
    """
    path = Path(path)
    try:
        if _is_keras_zip(path):
            with zipfile.ZipFile(path) as archive:
                if f"{name}.json" not in archive.namelist():
                    return None
                return archive.read(f"{name}.json").decode("utf-8")
        with h5py.File(path, "r") as f:
            text = f.attrs.get(name)
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise UnetslError(_not_a_model(path, name, exc)) from None
    if text is None:
        return None
    return text.decode("utf-8") if isinstance(text, bytes) else str(text)


def _not_a_model(path: Path, name: str, exc: Exception) -> str:
    """What to say of a file that is not a model: a config given by mistake names what to
    give instead; anything else says what a model file is."""
    if path.suffix.lower() == ".json":
        return (f"{path}: is a config, not a model file; give the model made from it "
                f"({path.stem}.h5, or {path.stem}-best.h5 after training)")
    if not h5py.is_hdf5(path) and not zipfile.is_zipfile(path):
        return (f"{path}: is not a model file (an HDF5 .h5 or a .keras file written by "
                "create_model, train_model or Keras)")
    what = "the training state" if name == STATE_RECORD else f"its {name} record"
    return f"{path}: cannot read {what} ({exc})"


#: The record of a checkpoint's training state (``unetsl.training.checkpoints``): a unetsl
#: model file without it was never trained.
STATE_RECORD = "unetsl_training_state"

#: The record of how a model's inputs are normalised (same name as the model attribute).
INPUT_RECORD = MODEL_ATTRIBUTE


def file_normalization(path: str | os.PathLike) -> InputNormalization | None:
    """How the model in ``path`` expects its inputs: its own record, else the settings of
    the training config beside it (NAME.json, the original's habit), else None."""
    text = read_record(path, INPUT_RECORD) if Path(path).is_file() else None
    if text is not None:
        try:
            return InputNormalization.from_json(text)
        except (ValueError, UnetslError) as exc:
            raise UnetslError(f"{path}: bad {INPUT_RECORD} record ({exc})") from None
    config = config_for_model(Path(path))
    if config is None:
        return None
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None  # an unreadable config beside a model: raw input, as the original
    data = layout_settings(data)  # a multi-head (cerberus) file: its unet + training keys
    try:
        return InputNormalization.from_settings(data) if isinstance(data, dict) else None
    except UnetslError:
        return None


def never_trained(path: str | os.PathLike) -> bool:
    """True for NAME.h5 (or .keras) beside its NAME.json without a training state: the file
    create_model writes, which training never rewrites (it writes NAME-best/-latest), in
    unetsl and in the original alike."""
    path = Path(path)
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    if stem.endswith(("-best", "-latest", "-batch")) or config_for_model(path) is None:
        return False
    return (config_for_model(path) == path.with_name(stem + ".json")
            and read_record(path, STATE_RECORD) is None)
