"""Cerberus configs: one U-Net with several heads, each at its own decoder level.

The original's ``cerberus create`` wrote a nested JSON (2-space indent): ``unet`` (the model
keys without "n labels"/"activation"), ``heads`` (name, n_labels, bits, offset, activation,
depth, resampler, labeller), ``data sources`` and, once trained, ``training``. This module
reads and checks that layout; its heads are LEVEL heads (``unetsl.config.heads``), which
``unetsl.nets.unet.build_model`` builds: for each head a 1x1(x1) conv ``cerberus_<name>`` on
the output of ``expansion-b-<depth>`` (the bottom level ``depth - 1`` is
``contraction-b-<depth-1>``, which the original could not select), then the activation layer
``<name>``; outputs in head order, named by head name. A head at
decoder level d predicts patch / pooling^d voxels; ``unetsl.predict.engine`` upsamples it back.

Training (``train_model -c cerberus.json``): :class:`CerberusTraining` is the config seen
as a training config (the ``training`` section, "loss function" and "loss weights" keyed by
head name), and :class:`unetsl.data.targets.HeadTargets` makes each head's target from the
raw label patch (the label bit contract): ``(label >> offset) & (2**bits - 1)`` -> the head's
labeller -> resampled to the head's resolution ("max pool", "min pool", "crop").
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from unetsl.atomic import atomic_write_text
from unetsl.config.fields import FIELD_BY_KEY, FIELDS, canonical_key, check_value
from unetsl.config.heads import DEFAULT_HEADS, ORIGINAL_UNET_KEYS, UNET_KEYS, Head, _check_divisible
from unetsl.config.model_config import LAYOUTS, Config, Layout, parse_overrides
from unetsl.errors import UnetslError

__all__ = [
    "DEFAULT_HEADS",
    "CerberusConfig",
    "CerberusTraining",
    "Head",
    "default_loss",
    "is_cerberus_config",
    "is_cerberus_file",
    "training_keys",
]

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
        if p.is_dir():
            raise UnetslError(f"{p}: is a folder, expected a .json config file")
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


# ------------------------------------------------------------------------------ training

PER_HEAD_KEYS = ("loss function", "loss weights")
"""Training keys that are objects {head name: value} in a cerberus config."""

_NOT_TRAINING = {"n labels": "each head has its own \"n_labels\"",
                 "activation": "each head has its own \"activation\"",
                 "cascade stages": "a cerberus model is not a cascade",
                 "data sources": "it is a section of its own"}


def training_keys() -> tuple[str, ...]:
    """The keys of the ``training`` section (every config key that is not a model key), in
    the order of ``unetsl.config.fields.FIELDS``; "loss weights" comes last, as the original
    wrote."""
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

    override_sections = ("unet", "heads", "training", "loss weights")  # -D whole sections

    def __init__(self, cerberus: CerberusConfig):
        super().__init__(path=cerberus.path)
        self.cerberus = cerberus
        self.had_training = "training" in cerberus.data
        self.values["loss function"], self.values["loss weights"] = {}, {}
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
    def name(self) -> str:
        return self.cerberus.name

    def heads(self, outputs: Sequence[str] | None = None) -> list[Head]:
        """The ``heads`` section, each with its "loss function" and "loss weights" entry
        (a model file must have these outputs: ``outputs`` is not used)."""
        losses, weights = self.values["loss function"], self.values["loss weights"]
        return [replace(h, loss=losses[h.name], loss_weight=float(weights[h.name]))
                for h in self.cerberus.heads]

    @property
    def head_names(self) -> list[str]:
        return [h.name for h in self.cerberus.heads]

    edit_section = "training"

    def edit_values(self) -> dict[str, Any]:
        """The editor shows the ``training`` section (the model is the heads')."""
        return self.training_section()

    def with_edited(self, values: Mapping[str, Any]) -> CerberusTraining:
        return self.with_training(values)

    @property
    def unsaved_sections(self) -> bool:
        """No ``training`` section yet: the original's ``cerberus train`` wrote it."""
        return not self.had_training

    def created_json(self) -> str:
        """What create writes: the file's own sections as read (no ``training`` added)."""
        return self.cerberus.to_json()

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
        self.values["loss function"] = {**self.values["loss function"], **entries}
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
        self.values["loss weights"] = {**self.values["loss weights"], **entries}
        self._sync_heads()

    def _sync_heads(self) -> None:
        """Losses and weights ({head name: value}, kept only in ``values``) for exactly the
        current heads, in head order; a head without an entry gets its default."""
        names = self.head_names
        losses, weights = self.values["loss function"], self.values["loss weights"]
        self.values["loss function"] = {n: losses.get(n, default_loss(n)) for n in names}
        self.values["loss weights"] = {n: weights.get(n, 1) for n in names}

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
                self.values["loss function"], self.values["loss weights"] = {}, {}
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
        """Every key's type. Loss names and the data sources a multi-head model can train on
        are checked where they are resolved (:func:`unetsl.training.setup.check_training_config`).
        """
        where = self._where
        for key, value in self.values.items():
            if key not in PER_HEAD_KEYS:
                check_value(key, value, source=where)

    # ---------------------------------------------------------------------- files
    def training_section(self) -> dict[str, Any]:
        """The ``training`` object as it is written: training keys, extra keys kept as
        written, then "loss weights"."""
        section = {k: copy.deepcopy(self.values[k]) for k in training_keys()}
        model_keys = set(UNET_KEYS) | set(_NOT_TRAINING)
        for key, value in self.values.items():
            if key not in section and key not in model_keys and key != "loss weights":
                section[key] = copy.deepcopy(value)
        section["loss weights"] = dict(self.values["loss weights"])
        return section

    def with_training(self, section: Mapping[str, Any]) -> CerberusTraining:
        """A copy of this config with ``section`` as its ``training`` section (the editor)."""
        data = json.loads(self.to_json())
        data["training"] = dict(section)
        return CerberusTraining(CerberusConfig(data, self.path))

    def to_json(self) -> str:
        """The cerberus layout: 2-space indent, no trailing newline, ``training`` last."""
        data = dict(self.cerberus.data)
        data["heads"] = [h.as_dict() for h in self.cerberus.heads]
        data["data sources"] = copy.deepcopy(self.values["data sources"])
        data["training"] = self.training_section()
        return json.dumps(data, indent=2)




def _flat_settings(data: dict) -> dict:
    """The ``unet`` and ``training`` sections as one flat {key: value}, unchecked."""
    sections = [data.get("unet"), data.get("training")]
    return {k: v for section in sections if isinstance(section, dict)
            for k, v in section.items()}


# A JSON object with "unet" and "heads" loads as its training view (Config.load).
LAYOUTS.append(Layout(is_cerberus_config,
                      lambda data, path: CerberusTraining(CerberusConfig(data, path)),
                      _flat_settings))
