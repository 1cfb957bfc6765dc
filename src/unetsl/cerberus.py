"""Cerberus configs: one U-Net with several heads, each at its own decoder level.

The original's ``cerberus create`` wrote a nested JSON (2-space indent): ``unet`` (the model
keys without "n labels"/"activation"), ``heads`` (name, n_labels, bits, offset, activation,
depth, resampler, labeller), ``data sources`` and, once trained, ``training``. This module
reads and checks that layout and builds its model (``build_cerberus``): for each head a
1x1(x1) conv ``cerberus_<name>`` on the output of ``expansion-b-<depth>`` (the bottom level
``depth - 1`` is ``contraction-b-<depth-1>``, which the original could not select), then
the activation layer ``<name>``; outputs in head order, named by head name. A head at
decoder level d predicts patch / pooling^d voxels; ``unetsl.predict`` upsamples it back.

Training (``train_model -c cerberus.json``): :class:`CerberusTraining` is the config seen
as a training config (the ``training`` section, "loss function" and "loss weights" keyed by
head name), and :class:`CerberusTargets` makes each head's target from the raw label patch
(the label bit contract): ``(label >> offset) & (2**bits - 1)`` -> the head's labeller ->
resampled to the head's resolution ("max pool", "min pool", "crop").
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unetsl.atomic import atomic_write_text
from unetsl.config import FIELD_BY_KEY, FIELDS, Config, canonical_key, check_value
from unetsl.errors import UnetslError

__all__ = [
    "DEFAULT_HEADS",
    "RESAMPLERS",
    "CerberusConfig",
    "CerberusTargets",
    "CerberusTraining",
    "Head",
    "bit_field",
    "build_cerberus",
    "check_cerberus_labels",
    "check_cerberus_model",
    "default_loss",
    "head_factors",
    "head_target",
    "is_cerberus_config",
    "is_cerberus_file",
    "resample_target",
    "training_keys",
]

UNET_KEYS = ("input shape", "kernel shape", "pooling", "depth", "n filters",
             "spatial dropout rate", "batch normalization")
"""Model keys the ``unet`` section may hold (defaults from ``unetsl.config.FIELDS``)."""

ORIGINAL_UNET_KEYS = UNET_KEYS[:-1]
"""The ``unet`` keys the original's default cerberus config wrote ("batch normalization" is
new in unetsl and left out, so a new file looks like the original's)."""

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
            why = (" (the original's experimental resampler is not ported)"
                   if data["resampler"] in ("region crop", "shuffle") else "")
            raise UnetslError(f'{at}: "resampler" {json.dumps(data["resampler"])} is not '
                              "supported" + why + "; use "
                              + ", ".join(f'"{r}"' for r in RESAMPLERS))
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


_ACTIVATIONS = frozenset((
    "sigmoid", "softmax", "relu", "linear", "tanh", "elu", "selu", "softplus", "softsign",
    "exponential", "gelu", "silu", "swish", "hard_sigmoid", "leaky_relu", "relu6", "mish",
    "log_softmax"))
"""Keras activation names known without importing Keras (loading a config stays fast)."""


def _check_activation(activation: Any, at: str) -> None:
    if isinstance(activation, str) and activation in _ACTIVATIONS:
        return
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


def _check_divisible(unet: dict[str, Any], where: str) -> None:
    """Each patch size a multiple of pooling^(depth-1), as ``model.check_patch_divisible``
    checks (z == 1 builds a 2-D U-Net), without importing Keras for it."""
    shape, pooling, depth = unet["input shape"], unet["pooling"], unet["depth"]
    for axis, size, factor in zip("zyx", shape[1:], pooling):
        block = factor ** (depth - 1)
        if (axis != "z" or size != 1) and (size < block or size % block):
            raise UnetslError(
                f'{where}: unet: "input shape" {list(shape)}: {axis} size {size} must be a '
                f'multiple of "pooling" {list(pooling)} ({factor}) to the power ("depth" '
                f"{depth} - 1) = {block}")


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
        _check_divisible(self.unet, where)
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

    @classmethod
    def default(cls, path: str | os.PathLike | None = None) -> CerberusConfig:
        """The original's ``cerberus create`` start for a missing file: the six ``unet`` keys
        of the original (§5) at their defaults and the three default heads."""
        unet = {k: copy.deepcopy(FIELD_BY_KEY[k].default) for k in ORIGINAL_UNET_KEYS}
        data = {"unet": unet, "heads": copy.deepcopy(DEFAULT_HEADS), "data sources": []}
        return cls(data, Path(path) if path is not None else None)

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
        from unetsl.config import parse_overrides

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


# ------------------------------------------------------------------------------ training

PER_HEAD_KEYS = ("loss function", "loss weights")
"""Training keys that are objects {head name: value} in a cerberus config."""

_NOT_TRAINING = {"n labels": "each head has its own \"n_labels\"",
                 "activation": "each head has its own \"activation\"",
                 "cascade stages": "a cerberus model is not a cascade",
                 "data sources": "it is a section of its own"}


def training_keys() -> tuple[str, ...]:
    """The keys of the ``training`` section (every config key that is not a model key), in
    the order of ``unetsl.config.FIELDS``; "loss weights" comes last, as the original wrote."""
    skip = set(UNET_KEYS) | set(_NOT_TRAINING)
    return tuple(f.key for f in FIELDS if f.key not in skip)


def default_loss(head_name: str) -> str:
    """The original's default loss of a head, chosen by its name."""
    if "distance" in head_name:
        return "unetsl.model.logMse"
    if "membrane" in head_name or "skeleton" in head_name:
        return "unetsl.model.sorensenDiceCoefLoss"
    return "keras.losses.mean_squared_error"


def _is_weight(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            and v >= 0)


class CerberusTraining(Config):
    """A cerberus config seen as a training config, so train() and the commands treat it as
    any other: ``cfg["key"]`` gives the ``unet`` keys, the ``training`` keys (defaults
    filled in, as for a plain config) and "data sources"; "loss function" and "loss weights"
    are {head name: value} in head order (per-head defaults: :func:`default_loss`, 1).
    ``save``/``to_json`` write the cerberus layout (2-space indent) with a full ``training``
    section, as the original's ``cerberus train`` did.
    """

    def __init__(self, cerberus: CerberusConfig):
        super().__init__(path=cerberus.path)
        self.cerberus = cerberus
        self.had_training = "training" in cerberus.data
        self._losses: dict[str, str] = {}
        self._weights: dict[str, float] = {}
        self._mirror_unet()
        Config.update(self, {"data sources": cerberus.data.get("data sources", [])},
                      source=self._where)
        self._set_training(cerberus.data.get("training", {}), f"{self._where}: training")

    @classmethod
    def load(cls, path: str | os.PathLike, *, must_exist: bool = True) -> CerberusTraining:
        """Read a cerberus JSON file; a one-line UnetslError names the file and the key."""
        return cls(CerberusConfig.load(path))

    # ---------------------------------------------------------------------- properties
    @property
    def _where(self) -> str:
        return str(self.path) if self.path is not None else "cerberus config"

    @property
    def heads(self) -> list[Head]:
        return self.cerberus.heads

    @property
    def head_names(self) -> list[str]:
        return [h.name for h in self.heads]

    # ---------------------------------------------------------------------- updates
    def _mirror_unet(self) -> None:
        for key, value in self.cerberus.unet.items():
            self.values[key] = copy.deepcopy(value)

    def _replace(self, **sections: Any) -> None:
        """New ``unet``/``heads`` sections: checked as a whole, losses follow the heads."""
        data = copy.deepcopy(self.cerberus.data)
        data.update(sections)
        self.cerberus = CerberusConfig(data, self.path)
        self._mirror_unet()
        self._sync_heads()

    def _set_training(self, section: Any, where: str) -> None:
        if not isinstance(section, dict):
            raise UnetslError(f'{where} must be an object {{...}}, got {json.dumps(section)}')
        plain = {}
        for raw, value in section.items():
            key = canonical_key(raw)
            if key in PER_HEAD_KEYS:
                continue
            if key in UNET_KEYS:
                raise UnetslError(f'{where}: "{key}" does not belong in "training"; it is a '
                                  '"unet" key')
            if key in _NOT_TRAINING:
                raise UnetslError(f'{where}: "{key}" does not belong in "training"; '
                                  + _NOT_TRAINING[key])
            plain[key] = value
        Config.update(self, plain, source=where)
        self._set_losses(section.get("loss function"), where)
        self._set_weights(section.get("loss weights"), where)

    def _per_head(self, key: str, value: Any, where: str, kind: str) -> dict[str, Any]:
        """{head: value} from an object keyed by head name or one value for every head."""
        names = self.head_names
        if isinstance(value, dict):
            unknown = [k for k in value if k not in names]
            if unknown:
                raise UnetslError(f'{where}: "{key}" has an entry for "{unknown[0]}", which is '
                                  f'not a head (heads: {", ".join(names)})')
            return dict(value)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return {n: value for n in names}
        raise UnetslError(f'{where}: "{key}" must be an object {{head name: {kind}}}, got '
                          f"{json.dumps(value)}")

    def _set_losses(self, value: Any, where: str) -> None:
        if value is None:
            self._sync_heads()
            return
        entries = self._per_head("loss function", value, where, "loss name")
        for head, loss in entries.items():
            if not isinstance(loss, str) or not loss:
                raise UnetslError(f'{where}: "loss function" of head "{head}" must be a loss '
                                  f"name, got {json.dumps(loss)}")
        self._losses.update(entries)
        self._sync_heads()

    def _set_weights(self, value: Any, where: str) -> None:
        if value is None:
            self._sync_heads()
            return
        entries = self._per_head("loss weights", value, where, "number")
        for head, weight in entries.items():
            if not _is_weight(weight):
                raise UnetslError(f'{where}: "loss weights" of head "{head}" must be a number '
                                  f">= 0, got {json.dumps(weight)}")
        self._weights.update(entries)
        self._sync_heads()

    def _sync_heads(self) -> None:
        """Losses and weights for exactly the current heads, in head order."""
        names = self.head_names
        self._losses = {n: self._losses.get(n, default_loss(n)) for n in names}
        self._weights = {n: self._weights.get(n, 1) for n in names}
        self.values["loss function"] = dict(self._losses)
        self.values["loss weights"] = dict(self._weights)

    def update(self, values: Mapping[str, Any], *, source: str | None = None) -> None:
        """Set keys as ``-D`` and the editors do: a ``unet`` key or training key by name,
        "loss function"/"loss weights" as {head: value} (or one value for every head), or a
        whole section ("unet", "heads", "training", "data sources")."""
        where = source or self._where
        for raw, value in values.items():
            key = canonical_key(raw)
            if key in ("unet", "heads"):
                self._replace(**{key: value})
            elif key in UNET_KEYS:
                self._replace(unet={**self.cerberus.data["unet"], key: value})
            elif key == "training":
                for name in training_keys():
                    self.values[name] = copy.deepcopy(FIELD_BY_KEY[name].default)
                self._losses, self._weights = {}, {}
                self._set_training(value, f"{where}: training")
            elif key == "loss function":
                self._set_losses(value, where)
            elif key == "loss weights":
                self._set_weights(value, where)
            elif key in _NOT_TRAINING and key != "data sources":
                raise UnetslError(f'{where}: "{key}" is not a key of a cerberus config; '
                                  + _NOT_TRAINING[key] + ' ("heads")')
            else:
                Config.update(self, {key: value}, source=where)

    # ---------------------------------------------------------------------- checks
    def validate(self) -> None:
        """Every key's type, and data sources cerberus can train on: unweighted, "linear
        labels" (the raw bit-packed label must reach the heads)."""
        where = self._where
        for key, value in self.values.items():
            if key not in PER_HEAD_KEYS:
                check_value(key, value, source=where)
        from unetsl.model import LOSSES  # here, not on load: attach must not start Keras

        for head, loss in self._losses.items():
            if loss not in LOSSES:
                raise UnetslError(f'{where}: training: "loss function" of head "{head}": '
                                  f'{json.dumps(loss)} is unknown; valid names: '
                                  + ", ".join(LOSSES))
        from unetsl.sources import parse_source

        for index, entry in enumerate(self.values["data sources"]):
            source = parse_source(entry, index, self.folder)
            if source.weighted:
                raise UnetslError(f"{where}: source {index}: weighted sources are not "
                                  "supported for cerberus")
            if source.labeller.name != "linear labels":
                raise UnetslError(
                    f'{where}: source {index}: "labeller" must be "linear labels" for cerberus '
                    f'(each head applies its own labeller to the raw label bits), got '
                    f'"{source.labeller.name}"')

    # ---------------------------------------------------------------------- files
    def training_section(self) -> dict[str, Any]:
        """The ``training`` object as it is written: training keys, extra keys kept as
        written, then "loss weights"."""
        section = {k: copy.deepcopy(self.values[k]) for k in training_keys()}
        model_keys = set(UNET_KEYS) | set(_NOT_TRAINING)
        for key, value in self.values.items():
            if key not in section and key not in model_keys and key != "loss weights":
                section[key] = copy.deepcopy(value)
        section["loss weights"] = dict(self._weights)
        return section

    def with_training(self, section: Mapping[str, Any]) -> CerberusTraining:
        """A copy of this config with ``section`` as its ``training`` section (the editor)."""
        data = json.loads(self.to_json())
        data["training"] = dict(section)
        return CerberusTraining(CerberusConfig(data, self.path))

    def to_json(self) -> str:
        """The cerberus layout: 2-space indent, no trailing newline, ``training`` last."""
        data = dict(self.cerberus.data)
        data["heads"] = [h.as_dict() for h in self.heads]
        data["data sources"] = copy.deepcopy(self.values["data sources"])
        data["training"] = self.training_section()
        return json.dumps(data, indent=2)


# ------------------------------------------------------------------------------ targets


def head_factors(pooling: Sequence[int], depth: int, z: int | None = None
                 ) -> tuple[int, int, int]:
    """(z, y, x) size ratio between the input patch and a head at decoder level ``depth``.

    z : the patch depth; a 2-D patch (z == 1) is not pooled in z (the 2-D U-Net).
    """
    fz, fy, fx = (int(p) ** int(depth) for p in pooling)
    return (1 if z == 1 else fz), fy, fx


def bit_field(label: np.ndarray, bits: int, offset: int) -> np.ndarray:
    """``(label >> offset) & (2**bits - 1)``: the unsigned field a head sees (label bit
    contract), in the smallest unsigned dtype that holds it.

    label : (z, y, x) non-negative integers (bool, integer, or float holding integers).
    """
    from unetsl.labellers import _as_bit_carrier

    values = _as_bit_carrier(np.asarray(label), "cerberus labels")
    field = (values >> np.uint64(offset)) & np.uint64((1 << bits) - 1)
    dtype = np.uint8 if bits <= 8 else np.uint16 if bits <= 16 else np.uint32
    return field.astype(dtype)


def resample_target(target: np.ndarray, resampler: str,
                    factors: Sequence[int]) -> np.ndarray:
    """A full-patch target (n, z, y, x) at head resolution (n, z/fz, y/fy, x/fx).

    "max pool" / "min pool": maximum / minimum of each fz x fy x fx block; "crop": the centre
    (the head sees only the middle of the patch). Factors of 1 leave the target as it is.
    """
    fz, fy, fx = (int(f) for f in factors)
    if (fz, fy, fx) == (1, 1, 1):
        return target
    n, z, y, x = target.shape
    if z % fz or y % fy or x % fx:
        raise UnetslError(f"cerberus: a patch of (z, y, x) = {(z, y, x)} cannot be "
                          f"resampled by {(fz, fy, fx)}; its sizes must be multiples")
    if resampler == "crop":
        starts = [(s - s // f) // 2 for s, f in ((z, fz), (y, fy), (x, fx))]
        (z0, y0, x0), (kz, ky, kx) = starts, (z // fz, y // fy, x // fx)
        return target[:, z0:z0 + kz, y0:y0 + ky, x0:x0 + kx]
    blocks = target.reshape(n, z // fz, fz, y // fy, fy, x // fx, fx)
    if resampler == "max pool":
        return blocks.max(axis=(2, 4, 6))
    if resampler == "min pool":
        return blocks.min(axis=(2, 4, 6))
    raise UnetslError(f'cerberus: "resampler" {json.dumps(resampler)} is not supported; use '
                      + ", ".join(f'"{r}"' for r in RESAMPLERS))


def head_target(label: np.ndarray, head: Head, pooling: Sequence[int]) -> np.ndarray:
    """The target of ``head`` for one raw label patch (z, y, x): (n_labels, z', y', x')."""
    from unetsl.labellers import get_labeller

    field = bit_field(label, head.bits, head.offset)
    target = get_labeller(head.labeller)(field, head.n_labels)
    factors = head_factors(pooling, head.depth, z=np.shape(label)[0])
    return resample_target(target, head.resampler, factors)


class CerberusTargets:
    """label patch (z, y, x) -> {head name: (n_labels, z', y', x')}: the per-patch target
    maker :class:`unetsl.data.PatchDataset` calls for a cerberus model (picklable, so
    multiprocessing workers can use it)."""

    def __init__(self, heads: Sequence[Head], pooling: Sequence[int]):
        self.heads = tuple(heads)
        self.pooling = tuple(int(p) for p in pooling)

    def __call__(self, label: np.ndarray) -> dict[str, np.ndarray]:
        return {head.name: head_target(label, head, self.pooling) for head in self.heads}


def _label_width(dtype: np.dtype) -> int | None:
    """How many bits a label of this dtype can carry (None: checked by value instead)."""
    if dtype == np.bool_:
        return 1
    if np.issubdtype(dtype, np.unsignedinteger):
        return dtype.itemsize * 8
    if np.issubdtype(dtype, np.signedinteger):
        return dtype.itemsize * 8 - 1
    return None


def check_cerberus_labels(volumes: Sequence[Any], heads: Sequence[Head], where: str) -> None:
    """Every head's bits must exist in the label images and its labeller must accept what it
    finds there; a one-line UnetslError names the config, the head key and the label file.

    volumes : :class:`unetsl.sources.Volume` objects; where : the config path for messages.
    """
    from unetsl.labellers import get_labeller
    from unetsl.sources import _label_values

    for volume in volumes:
        path = volume.pair.label
        label = volume.label
        if label.size == 0:
            continue
        width = _label_width(label.dtype)
        for head in heads:
            top = head.offset + head.bits
            if width is not None and top > width:
                raise UnetslError(
                    f'{where}: head "{head.name}": "offset" {head.offset} + "bits" {head.bits} '
                    f"reads bits {head.offset}..{top - 1} but {path} holds {label.dtype} "
                    f"labels (bits 0..{width - 1})")
        values = _label_values(label).reshape(1, 1, -1)
        try:
            bit_field(values, 1, 0)  # non-negative integers only
        except UnetslError as err:
            raise UnetslError(f"{where}: {path}: {err}") from None
        for head in heads:
            field = bit_field(values, head.bits, head.offset)
            labeller = get_labeller(head.labeller)
            if labeller.reduction == "multiclass" and field.size:
                top = int(field.max())
                if top >= 2**head.n_labels:
                    raise UnetslError(
                        f'{where}: head "{head.name}": "n_labels" {head.n_labels} is too few '
                        f"for bit field value {top} in {path} ({labeller.name} needs "
                        f"{top.bit_length()})")
            try:
                labeller(field, head.n_labels)
            except UnetslError as err:
                raise UnetslError(f'{where}: head "{head.name}": {path}: {err}') from None


def check_cerberus_model(model: Any, config: CerberusConfig, source: Path | str) -> None:
    """The model file must have the config's heads: same names, order and output shapes."""
    names = list(model.output_names)
    wanted = [h.name for h in config.heads]
    hint = (f"; rebuild it with create_model -c {config.path} (or remove {source} and "
            "train_model builds it)")
    if names != wanted:
        raise UnetslError(f"{source}: outputs {', '.join(names)} do not match the heads of "
                          f"{config.path} ({', '.join(wanted)}){hint}")
    _, z, y, x, _ = (int(s) if s is not None else 0 for s in model.inputs[0].shape)
    for head, output in zip(config.heads, model.outputs):
        f = head_factors(config.unet["pooling"], head.depth, z=z)
        expected = (z // f[0], y // f[1], x // f[2], head.n_labels)
        got = tuple(int(s) for s in output.shape[1:])
        if got != expected:
            raise UnetslError(f'{source}: output "{head.name}" has shape {got} but head '
                              f'"{head.name}" of {config.path} wants {expected} (z, y, x, '
                              f"n_labels){hint}")
