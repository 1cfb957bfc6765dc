"""Cerberus configs: one U-Net with several heads, each at its own decoder level.

The original's ``cerberus create`` wrote a nested JSON (2-space indent): ``unet`` (the model
keys without "n labels"/"activation"), ``heads`` (name, n_labels, bits, offset, activation,
depth, resampler, labeller), ``data sources`` and, once trained, ``training``. This module
reads and checks that layout and builds its model (``build_cerberus``): for each head a
1x1(x1) conv ``cerberus_<name>`` on the output of ``expansion-b-<depth>`` (the bottom level
``depth - 1`` is ``contraction-b-<depth-1>``, which the original could not select), then
the activation layer ``<name>``; outputs in head order, named by head name. A head at
decoder level d predicts patch / pooling^d voxels; ``unetsl.predict`` upsamples it back.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unetsl.atomic import atomic_write_text
from unetsl.errors import UnetslError

__all__ = [
    "DEFAULT_HEADS",
    "RESAMPLERS",
    "CerberusConfig",
    "Head",
    "build_cerberus",
    "is_cerberus_config",
    "is_cerberus_file",
]

UNET_KEYS = ("input shape", "kernel shape", "pooling", "depth", "n filters",
             "spatial dropout rate", "batch normalization")
"""Model keys the ``unet`` section may hold (defaults from ``unetsl.config.FIELDS``)."""

RESAMPLERS = ("max pool", "min pool", "crop")
"""Target resamplers unetsl knows; the original's "region crop"/"shuffle" are not ported."""

HEAD_KEYS = ("name", "n_labels", "bits", "offset", "activation", "depth", "resampler",
             "labeller")

DEFAULT_HEADS: list[dict[str, Any]] = [
    {"name": "distance", "n_labels": 1, "bits": 6, "offset": 2, "activation": "relu",
     "depth": 0, "resampler": "min pool", "labeller": "linear labels"},
    {"name": "membrane-scale", "n_labels": 2, "bits": 2, "offset": 0, "activation": "sigmoid",
     "depth": 1, "resampler": "max pool", "labeller": "multiclass labels"},
    {"name": "membrane-crop", "n_labels": 2, "bits": 2, "offset": 0, "activation": "sigmoid",
     "depth": 0, "resampler": "crop", "labeller": "multiclass labels"},
]
"""The original's three default heads (§5 of the behaviour notes)."""


def is_cerberus_config(data: Any) -> bool:
    """A parsed JSON object in the cerberus layout (has "unet" and "heads")."""
    return isinstance(data, dict) and "unet" in data and "heads" in data


def is_cerberus_file(path: str | os.PathLike) -> bool:
    """True when ``path`` is a readable JSON file in the cerberus layout."""
    p = Path(path)
    if not p.is_file():
        return False
    try:
        return is_cerberus_config(json.loads(p.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, ValueError):
        return False


def _is_int(v: Any, minimum: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= minimum


@dataclass(frozen=True)
class Head:
    """One output of a cerberus model and how its training target is made."""

    name: str
    n_labels: int
    bits: int
    offset: int
    activation: str
    depth: int
    resampler: str
    labeller: str

    @classmethod
    def from_dict(cls, data: Any, *, where: str, index: int, unet_depth: int) -> Head:
        """Check one ``heads`` entry; one-line UnetslError naming the head and key."""
        at = f'{where}: heads[{index}]'
        if not isinstance(data, dict):
            raise UnetslError(f"{at} must be an object {{...}}, got {json.dumps(data)}")
        unknown = sorted(set(data) - set(HEAD_KEYS))
        if unknown:
            raise UnetslError(f'{at}: unknown key "{unknown[0]}"; head keys are '
                              + ", ".join(HEAD_KEYS))
        missing = [k for k in HEAD_KEYS if k not in data and k != "labeller"]
        if missing:
            raise UnetslError(f'{at}: missing key "{missing[0]}"')
        name = data["name"]
        if not isinstance(name, str) or not name.strip() or "/" in name:
            raise UnetslError(f'{at}: "name" must be a non-empty text without "/", got '
                              f"{json.dumps(name)}")
        at = f'{where}: head "{name}"'
        for key, minimum in (("n_labels", 1), ("bits", 1), ("offset", 0), ("depth", 0)):
            if not _is_int(data[key], minimum):
                raise UnetslError(f'{at}: "{key}" must be an integer >= {minimum}, got '
                                  f"{json.dumps(data[key])}")
        if data["bits"] + data["offset"] > 32:
            raise UnetslError(f'{at}: "bits" + "offset" = {data["bits"] + data["offset"]} '
                              "exceeds the 32 bits of a label")
        if data["depth"] > unet_depth - 1:
            raise UnetslError(f'{at}: "depth" {data["depth"]} is out of range: the unet has '
                              f'levels 0 .. {unet_depth - 1} ("depth" {unet_depth})')
        activation = data["activation"]
        _check_activation(activation, at)
        if data["resampler"] not in RESAMPLERS:
            raise UnetslError(f'{at}: "resampler" {json.dumps(data["resampler"])} is not '
                              "supported; use " + ", ".join(f'"{r}"' for r in RESAMPLERS))
        labeller = data.get("labeller") or ("linear labels" if activation == "relu"
                                            else "multiclass labels")
        from unetsl.labellers import get_labeller

        try:
            get_labeller(labeller)
        except UnetslError as err:
            raise UnetslError(f'{at}: "labeller": {err}') from None
        return cls(name, data["n_labels"], data["bits"], data["offset"], activation,
                   data["depth"], data["resampler"], labeller)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in HEAD_KEYS}


def _check_activation(activation: Any, at: str) -> None:
    import keras

    ok = isinstance(activation, str) and activation != ""
    if ok:
        try:
            keras.activations.get(activation)
        except ValueError:
            ok = False
    if not ok:
        raise UnetslError(f'{at}: "activation" {json.dumps(activation)} is not a Keras '
                          "activation (sigmoid, softmax, relu, linear, ...)")


class CerberusConfig:
    """A cerberus JSON config: the ``unet`` section with defaults filled in, checked heads,
    and every other section (``data sources``, ``training``) kept as written."""

    def __init__(self, data: dict[str, Any], path: Path | None = None):
        self.path = path
        self.data = copy.deepcopy(data)
        where = str(path) if path is not None else "cerberus config"
        unet = self.data.get("unet")
        if not isinstance(unet, dict):
            raise UnetslError(f'{where}: "unet" must be an object {{...}}')
        from unetsl.config import FIELD_BY_KEY, canonical_key, check_value

        values = {}
        for raw, value in unet.items():
            key = canonical_key(raw)
            if key in ("n labels", "activation"):
                raise UnetslError(f'{where}: "unet" must not hold "{key}"; each head has its '
                                  "own n_labels and activation")
            if key not in UNET_KEYS:
                raise UnetslError(f'{where}: unknown "unet" key "{raw}"; known: '
                                  + ", ".join(UNET_KEYS))
            check_value(key, value, source=f"{where}: unet")
            values[key] = value
        self.unet = {k: values.get(k, copy.deepcopy(FIELD_BY_KEY[k].default)) for k in UNET_KEYS}
        from unetsl.model import check_patch_divisible

        try:
            check_patch_divisible(self.unet["input shape"], self.unet["pooling"],
                                  self.unet["depth"])
        except UnetslError as err:
            raise UnetslError(f"{where}: unet: {err}") from None
        heads = self.data.get("heads")
        if not isinstance(heads, list) or not heads:
            raise UnetslError(f'{where}: "heads" must be a non-empty list of head objects')
        self.heads = [Head.from_dict(h, where=where, index=i, unet_depth=self.unet["depth"])
                      for i, h in enumerate(heads)]
        names = [h.name for h in self.heads]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise UnetslError(f'{where}: head name "{twice[0]}" is used twice')
        sources = self.data.get("data sources", [])
        if not isinstance(sources, list) or not all(isinstance(s, dict) for s in sources):
            raise UnetslError(f'{where}: "data sources" must be a list of source objects')

    @classmethod
    def load(cls, path: str | os.PathLike) -> CerberusConfig:
        p = Path(path)
        if not p.is_file():
            raise UnetslError(f"{p}: config file does not exist")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise UnetslError(f"{p}: malformed JSON at line {err.lineno} column {err.colno}: "
                              f"{err.msg}") from None
        except (OSError, UnicodeDecodeError) as err:
            raise UnetslError(f"{p}: cannot read config: {err}") from None
        if not is_cerberus_config(data):
            raise UnetslError(f'{p}: not a cerberus config (needs "unet" and "heads")')
        return cls(data, p)

    @property
    def name(self) -> str:
        if self.path is None:
            return "cerberus"
        return self.path.name[:-5] if self.path.name.endswith(".json") else self.path.stem

    @property
    def model_path(self) -> Path:
        """``<name>.h5`` beside the config."""
        folder = self.path.parent if self.path is not None else Path(".")
        return folder / f"{self.name}.h5"

    def apply_overrides(self, overrides: Any) -> None:
        """``-D key=json``: a unet key (``n filters=8``) or a whole section (``heads=[...]``)."""
        from unetsl.config import canonical_key, parse_overrides

        data = copy.deepcopy(self.data)
        for key, value in parse_overrides(overrides).items():
            if key in ("unet", "heads", "data sources", "training"):
                data[key] = value
            elif canonical_key(key) in UNET_KEYS:
                data["unet"] = {**data["unet"], canonical_key(key): value}
            else:
                raise UnetslError(f'-D "{key}": a cerberus config takes a "unet" key ('
                                  + ", ".join(UNET_KEYS) + ') or a whole "heads" list')
        fresh = CerberusConfig(data, self.path)
        self.data, self.unet, self.heads = fresh.data, fresh.unet, fresh.heads

    def to_json(self) -> str:
        """The original's layout: 2-space indent, no trailing newline."""
        data = dict(self.data)
        data["unet"] = {k: v for k, v in self.data["unet"].items()}
        data["heads"] = [h.as_dict() for h in self.heads]
        data.setdefault("data sources", [])
        return json.dumps(data, indent=2)

    def save(self, path: str | os.PathLike | None = None) -> Path:
        target = Path(path) if path is not None else self.path
        if target is None:
            raise UnetslError("cerberus config has no file name to save to")
        atomic_write_text(target, self.to_json())
        return target


def _level_tensor(base, level: int, depth: int):
    """The decoder output at ``level`` (0 = full resolution) of a unetsl U-Net."""
    name = f"expansion-b-{level}" if level < depth - 1 else f"contraction-b-{level}"
    names = {layer.name for layer in base.layers}
    for candidate in (f"{name}-relu", name):  # with batch normalization the ReLU is last
        if candidate in names:
            tensor = base.get_layer(candidate).output
            break
    else:  # pragma: no cover - the U-Net always has these layers
        raise UnetslError(f"cerberus: layer {name} not found")
    if level == depth - 1 and f"unetsl-do-cb-{level}" in names:
        tensor = base.get_layer(f"unetsl-do-cb-{level}").output
    return tensor


def build_cerberus(config: CerberusConfig):
    """The multi-head model of a cerberus config (Keras, channels-last, untrained).

    Input (batch, z, y, x, c); output k (batch, z/p_z^d, y/p_y^d, x/p_x^d, n_labels) for
    head k at level d, p = "pooling". Layer names follow the original: ``cerberus_<name>``
    (1x1 conv), ``<name>`` (activation), so the original's weights transfer by name.
    """
    import keras
    from keras import layers

    from unetsl.model import build_unet

    unet = config.unet
    depth = unet["depth"]
    base = build_unet(unet["input shape"], n_labels=1, depth=depth,
                      n_filters=unet["n filters"], kernel_shape=unet["kernel shape"],
                      pooling=unet["pooling"], activation="sigmoid",
                      spatial_dropout_rate=unet["spatial dropout rate"],
                      batch_normalization=unet["batch normalization"], name=config.name)
    _, z, _, _ = unet["input shape"]
    outputs = []
    for head in config.heads:
        x = _level_tensor(base, head.depth, depth)
        if len(x.shape) == 4:  # a 2-D U-Net (z == 1): heads are 2-D, then back to 5-D
            _, y, xs, _ = x.shape
            x = layers.Conv2D(head.n_labels, (1, 1), name=f"cerberus_{head.name}")(x)
            x = layers.Reshape((1, y, xs, head.n_labels), name=f"cerberus_{head.name}-3d")(x)
        else:
            x = layers.Conv3D(head.n_labels, (1, 1, 1), name=f"cerberus_{head.name}")(x)
        outputs.append(layers.Activation(head.activation, name=head.name)(x))
    return keras.Model(base.inputs, outputs, name=config.name)
