"""The one model/training config: the JSON file, -D overrides, validation and saving.

Keys keep the original ActiveUnetSegmentation spelling ("input shape", "n labels", ...)
so that its users' JSON files load unchanged; :mod:`unetsl.config.fields` holds them.
A file in another on-disk layout (the original's cerberus files) is read by the layout that
recognises it (:data:`LAYOUTS`), so this module needs to know none of them.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from unetsl.atomic import atomic_write_text, check_writable
from unetsl.config.fields import (
    FIELD_BY_KEY,
    OBSOLETE,
    OPTIONAL_KEYS,
    canonical_key,
    check_value,
    closest_key,
    defaults,
    new_config_defaults,
    unknown_key_hint,
)
from unetsl.config.heads import STAGE, Head
from unetsl.errors import UnetslError

log = logging.getLogger("unetsl")

class Layout(NamedTuple):
    """Another on-disk layout of a config: how to recognise its JSON object, build its
    :class:`Config`, and read its settings as one flat {key: value} without checking them
    (what readers of a model's records need, e.g. how its inputs were normalised)."""

    recognises: Callable[[dict], bool]
    build: Callable[[dict, Path], Config]
    settings: Callable[[dict], dict]


#: Every layout other than the flat one; :mod:`unetsl.config.cerberus_layout` adds the
#: original's multi-head files on import. Readers of config files go through
#: :meth:`Config.load` or :func:`layout_settings`, never through a layout's own test.
LAYOUTS: list[Layout] = []


def layout_settings(data: Any) -> dict | None:
    """The flat settings of a parsed config file in any layout (None: not a JSON object)."""
    if not isinstance(data, dict):
        return None
    for layout in LAYOUTS:
        if layout.recognises(data):
            return layout.settings(data)
    return data


class Config:
    """A model config: the original's keys with defaults filled in, tied to its JSON file.

    ``Config`` behaves like a mapping of the JSON keys. Unknown keys are kept (and
    written back) after one warning that names the closest known key.
    """

    def __init__(self, values: Mapping[str, Any] | None = None,
                 path: str | os.PathLike | None = None):
        self.path: Path | None = Path(path) if path is not None else None
        self.values: dict[str, Any] = defaults()
        self._warned: set[str] = set()
        if values:
            self.update(values)

    @classmethod
    def new(cls, path: str | os.PathLike | None = None) -> Config:
        """A new config as create_model starts it: unetsl's defaults for new models
        (``fields.new_config_defaults``), e.g. input normalisation on."""
        config = cls(path=path)
        config.values = new_config_defaults()
        return config

    # mapping protocol -------------------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        return self.values[canonical_key(key)]

    def __setitem__(self, key: str, value: Any) -> None:
        self.update({key: value})

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and canonical_key(key) in self.values

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(canonical_key(key), default)

    def keys(self) -> Iterable[str]:
        return self.values.keys()

    def as_dict(self) -> dict[str, Any]:
        """A deep copy of the values, in file order."""
        return copy.deepcopy(self.values)

    # updates ----------------------------------------------------------------------
    def update(self, values: Mapping[str, Any], *, source: str | None = None) -> None:
        """Set keys (aliases accepted), checking each value; warns once per unknown key."""
        where = source or (str(self.path) if self.path else "config")
        for raw_key, value in values.items():
            key = canonical_key(raw_key)
            if key in OBSOLETE:
                self._warn_once(key, f'{where}: key "{key}" is ignored: {OBSOLETE[key]}')
                continue
            if key not in FIELD_BY_KEY and key not in OPTIONAL_KEYS:
                hint = closest_key(key)
                tip = f' (did you mean "{hint}"?)' if hint else ""
                self._warn_once(key, f'{where}: unknown key "{key}" kept as is{tip}')
            check_value(key, value, source=where)
            self.values[key] = copy.deepcopy(value)

    #: keys -D may set besides the config keys (a layout's whole sections, e.g. "heads")
    override_sections: tuple[str, ...] = ()

    def apply_overrides(self, overrides: Iterable[str]) -> dict[str, Any]:
        """Apply ``-D "key=json"`` texts; returns what was set. The value must be JSON and
        the key known: a typo is refused (with the closest key) instead of being saved."""
        parsed = parse_overrides(overrides)
        known = (*FIELD_BY_KEY, *OPTIONAL_KEYS, *OBSOLETE, *self.override_sections)
        for key in parsed:
            if key not in known:
                raise UnetslError(f'-D "{key}": unknown key; {unknown_key_hint(key)}')
        self.update(parsed, source="-D")
        return parsed

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)

    # derived values ---------------------------------------------------------------
    @property
    def name(self) -> str:
        """The model's base name: the config file name without .json."""
        if self.path is None:
            return "model"
        return self.path.name[:-5] if self.path.name.endswith(".json") else self.path.stem

    @property
    def folder(self) -> Path:
        return self.path.parent if self.path is not None else Path(".")

    @property
    def model_path(self) -> Path:
        """``<name>.h5`` beside the config, or the "model file" key when present."""
        explicit = self.values.get("model file")
        if explicit:
            p = Path(os.path.expandvars(os.path.expanduser(explicit)))
            return p if p.is_absolute() else self.folder / p
        return self.folder / f"{self.name}.h5"

    def heads(self, outputs: Sequence[str] | None = None) -> list[Head]:
        """The model's outputs: one head "output", or with "cascade stages" N >= 1 one per
        U-Net of the chain, ``cascade_0`` .. ``cascade_<N-1>``; each with "n labels",
        "activation", "loss function" and, when "loss weights" is an object, its weight
        (default 1). Their targets come from the data sources' labeller.

        outputs : the output names of an existing model file, which wins over "cascade
            stages" (training trains the file as it is); other layouts keep their own heads.
        """
        if outputs is None:
            stages = self.values["cascade stages"]
            outputs = ["output"] if stages < 1 else [f"cascade_{k}" for k in range(stages)]
        weights = self.values.get("loss weights")
        return [Head(name, self.values["n labels"], activation=self.values["activation"],
                     loss=self.values["loss function"], kind=STAGE,
                     loss_weight=(float(weights.get(name, 1)) if isinstance(weights, dict)
                                  else None))
                for name in outputs]

    #: the section the settings editor of train_model shows (None: the whole config)
    edit_section: str | None = None

    def edit_values(self) -> dict[str, Any]:
        """What the settings editor shows (train_model): every key."""
        return self.as_dict()

    def with_edited(self, values: Mapping[str, Any]) -> Config:
        """A config of the editor's ``values`` (those of :meth:`edit_values`), same file."""
        return Config(values, path=self.path)

    @property
    def unsaved_sections(self) -> bool:
        """The file lacks a section that training writes into it (a layout's own)."""
        return False

    def created_json(self) -> str:
        """The JSON create_model writes: the whole config (:meth:`to_json`)."""
        return self.to_json()

    def sibling(self, suffix: str) -> Path:
        """A file named after the model, e.g. sibling("-latest.h5") -> <name>-latest.h5."""
        model = self.model_path
        base = model.name[: -len(model.suffix)] if model.suffix else model.name
        return model.parent / f"{base}{suffix}"

    # validation -------------------------------------------------------------------
    def validate(self) -> None:
        """Check every key and the relations between them; one-line UnetslError on failure."""
        where = str(self.path) if self.path else "config"
        for key, value in self.values.items():
            check_value(key, value, source=where)
        depth = self.values["depth"]
        pooling = self.values["pooling"]
        shape = self.values["input shape"]
        for axis, size, pool in zip("zyx", shape[1:], pooling):
            factor = pool ** (depth - 1)
            if size % factor:
                raise UnetslError(
                    f'{where}: "input shape" {axis} size {size} is not divisible by '
                    f'"pooling" {pool} ^ ("depth" {depth} - 1) = {factor}'
                )

    # files ------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike, *, must_exist: bool = True) -> Config:
        """Defaults updated with the JSON file's keys (a missing file gives a new config,
        :meth:`new`, when ``must_exist`` is false).

        A cerberus file (with "unet" and "heads") gives a
        :class:`unetsl.config.cerberus_layout.CerberusTraining`, which saves in its own layout.
        """
        p = Path(path)
        if not p.exists():
            if must_exist:
                raise UnetslError(f"{p}: config file does not exist")
            return cls.new(p)
        if p.is_dir():
            raise UnetslError(f"{p}: is a folder, expected a .json config file")
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise UnetslError(f"{p}: cannot read config: {err}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            data, fixed = lenient_json(text)
            if not fixed:
                raise UnetslError(f"{p}: malformed JSON at line {err.lineno} column "
                                  f"{err.colno}: {err.msg}") from None
            log.warning(f"{p}: not strict JSON ({' and '.join(fixed)}, as in the original's "
                        "README); read leniently, and saving the config writes proper JSON")
        if not isinstance(data, dict):
            raise UnetslError(
                f"{p}: a config must be a JSON object {{...}}, got {type(data).__name__}")
        for layout in LAYOUTS:  # e.g. a multi-head config: its training view
            if layout.recognises(data):
                return layout.build(data, p)
        cfg = cls(path=p)
        cfg.update(data, source=str(p))
        return cfg

    def to_json(self) -> str:
        """The original's layout: 4-space indent, no trailing newline."""
        return json.dumps(self.values, indent=4)

    def save(self, path: str | os.PathLike | None = None, *, backup: bool = False,
             text: str | None = None) -> Path:
        """Write the JSON atomically (temp file + rename). ``backup``: the commands' one
        save path (create_model, cerberus create, train_model): check that the file can be
        written, keep the old one as ``NAME-json.bak``, then write. ``text`` replaces
        ``to_json()`` (a layout that writes its file as it was read)."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise UnetslError("config has no file name to save to")
        if backup:
            check_writable([target])
            back_up_config(target)
        atomic_write_text(target, self.to_json() if text is None else text)
        return target


def lenient_json(text: str) -> tuple[Any, list[str]]:
    """Parse JSON written with the Python of the original's README: tuples such as
    ``"input shape": (1, 3, 64, 64)`` become lists and trailing commas are dropped, outside
    strings only (never ``eval``). Returns (value, what was changed), or (None, []) when the
    text is not JSON even then."""
    out: list[str] = []
    fixed: list[str] = []
    in_string = escaped = False
    for ch in text:
        if in_string:
            in_string = escaped or ch != '"'
            escaped = not escaped and ch == "\\"
        elif ch == '"':
            in_string = True
        elif ch in "()":
            ch = "[" if ch == "(" else "]"
            if "Python tuples (...)" not in fixed:
                fixed.append("Python tuples (...)")
        if not in_string and ch in "]}":
            end = len(out) - 1
            while end >= 0 and out[end].isspace():
                end -= 1
            if end >= 0 and out[end] == ",":
                del out[end]
                if "trailing commas" not in fixed:
                    fixed.append("trailing commas")
        out.append(ch)
    if not fixed:
        return None, []
    try:
        return json.loads("".join(out)), fixed
    except json.JSONDecodeError:
        return None, []


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one ``key=json`` override, e.g. ``batch size=128`` or ``stride=[0,3,16,16]``."""
    if "=" not in text:
        raise UnetslError(f'-D "{text}": expected "key=value", e.g. -D "batch size=16"')
    key, _, value = text.partition("=")
    key = canonical_key(key)
    if not key:
        raise UnetslError(f'-D "{text}": missing key before "="')
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        raise UnetslError(
            f'-D "{text}": could not parse value {value!r} of key "{key}" as JSON '
            '(strings need quotes: -D \'key="text"\')'
        ) from None
    return key, parsed


def parse_overrides(texts: Iterable[str]) -> dict[str, Any]:
    """Parse several ``-D`` texts; later ones win."""
    result: dict[str, Any] = {}
    for text in texts:
        key, value = parse_override(text)
        result[key] = value
    return result


def config_for_model(model: str | os.PathLike) -> Path | None:
    """The JSON config a model was made from: NAME.json beside NAME.h5,
    NAME-best/-latest/-batch.h5 or a fine-tuning run's NAME-tuned-best/-latest/-batch.h5
    (else the file's own stem .json), or None."""
    model = Path(model)
    stem = model.name[: -len(model.suffix)] if model.suffix else model.name
    names = [stem[: -len(s)] for s in ("-tuned-best", "-tuned-latest", "-tuned-batch",
                                       "-best", "-latest", "-batch") if stem.endswith(s)]
    for name in [*names, stem]:
        candidate = model.with_name(name + ".json")
        if candidate.is_file():
            return candidate
    return None


def back_up_config(path: str | os.PathLike) -> Path | None:
    """Copy an existing config to ``NAME-json.bak`` (the original's name for it) before it is
    rewritten, atomically; returns the backup, or None when there is nothing to back up."""
    source = Path(path)
    if not source.exists():
        return None
    name = source.name
    backup = source.with_name(name[:-5] + "-json.bak" if name.endswith(".json") else name + ".bak")
    atomic_write_text(backup, source.read_text(encoding="utf-8"))
    return backup
