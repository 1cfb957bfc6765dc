"""The attach_data_sources dialogue: the original's prompts, choices and order, as a state machine.

The original asked plain line prompts (``input()`` with readline). :class:`AttachDialogue`
holds the same questions without any terminal: :meth:`AttachDialogue.prompt` gives the
lines to show and the input caption, :meth:`AttachDialogue.answer` takes one typed line and
returns the messages to show. The urwid menu (``unetsl.cli.attach_menu``) and the tests
drive it. The keystrokes a user of the original typed still work::

    1 <enter> images <enter> labels <enter> <enter> 1 <enter> <enter> y <enter>

adds a paired multiclass source and saves.

Differences from the original, on purpose: folders are checked as they are typed (missing
or empty folders, labels that pair with no image, images and labels of different shapes are
refused with one line naming the files, and the question is asked again); an out-of-range
index in the remove menu says so; angles are degrees.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unetsl.config.model_config import Config
from unetsl.data.labellers import LABELLERS
from unetsl.data.sources import (
    PAIRED,
    WEIGHTED,
    check_source_files,
    list_images,
    make_entry,
    parse_source,
    stored_path,
)
from unetsl.data.targets import check_label_file
from unetsl.data.volumes import check_source_labels
from unetsl.errors import UnetslError
from unetsl.io.tiff import write_image

__all__ = ["AttachDialogue", "Prompt", "add_array_pair", "add_source", "capture_warnings",
           "complete_path", "model_channels", "remove_sources", "source_lines"]

MAIN_LINES = ["enter type: ", "1. paired directory", "2. weighted directories",
              "3. remove existing sources.", "<anything else>. stop"]
LABELLER_LINES = ["labellers: "] + [f"  -  {i} :  {name}" for i, name in enumerate(LABELLERS)]
YES = ("y", "Y", "yes", "Yes", "YES")


@dataclass(frozen=True)
class Prompt:
    """What to show before reading one line: ``lines`` above, ``caption`` on the input line."""

    lines: tuple[str, ...]
    caption: str
    paths: bool = False  # tab completes file names


@contextmanager
def capture_warnings() -> Iterator[list[str]]:
    """Collect the library's warnings (e.g. unlabelled images) as text lines."""
    caught: list[str] = []

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            caught.append(f"warning: {record.getMessage()}")

    logger = logging.getLogger("unetsl")
    saved = logger.handlers[:], logger.propagate
    logger.handlers = [Handler(logging.WARNING)]  # nothing reaches the terminal under urwid
    logger.propagate = False
    try:
        yield caught
    finally:
        logger.handlers, logger.propagate = saved


def source_lines(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    """``<i>. <source as JSON>``, one line per source (the original's remove listing)."""
    return [f"{i}. {json.dumps(entry)}" for i, entry in enumerate(entries)]


def add_source(entries: list[dict[str, Any]], entry: dict[str, Any], folder: str | os.PathLike,
               n_labels: int | None = None) -> int:
    """Check ``entry`` and its files (paired, same shapes) and append it; the pair count.

    n_labels : the model's output channels (:func:`model_channels`): a labeller that cannot
        fill them (e.g. "linear labels", one channel, for a 2-channel model) is refused now,
        not when training starts.
    """
    source = parse_source(entry, len(entries), folder)
    if n_labels is not None:
        check_source_labels(source, n_labels)
    pairs = check_source_files(source)
    if n_labels is not None:
        for pair in pairs:
            check_label_file(source, pair.label, n_labels)
    entries.append(entry)
    return len(pairs)


def model_channels(cfg: Config) -> int | None:
    """The target channels a source of ``cfg`` must give ("n labels"); None when the heads
    make their own targets from the raw label (the original's multi-head files)."""
    if any(head.own_target for head in cfg.heads()):
        return None
    return int(cfg["n labels"])


def add_array_pair(entries: list[dict[str, Any]], folder: str | os.PathLike, name: str,
                   image: np.ndarray, label: np.ndarray, labeller: str | int, *,
                   spacing: Sequence[float] = (1.0, 1.0, 1.0), unit: str = "pixel"
                   ) -> tuple[dict[str, Any], int]:
    """Write an image and its label image held in memory (e.g. napari layers, (t, c, z, y, x)
    or fewer axes) as ``<folder>/<name>/images/<name>.tif`` and ``labels/<name>.tif``, and
    add that pair of folders as a paired source, checked as a typed one; the entry and its
    pair count. The same pair added again rewrites the files but not the entry."""

    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "layer"
    root = Path(folder) / safe
    spacing3 = (float(spacing[0]), float(spacing[1]), float(spacing[2]))
    for role, array in (("images", image), ("labels", label)):
        write_image(root / role / f"{safe}.tif", array, spacing=spacing3, unit=unit)
    stored = [stored_path(str(root / role), folder) for role in ("images", "labels")]
    entry = make_entry(PAIRED, stored, labeller)
    if entry in entries:
        pairs = check_source_files(parse_source(entry, entries.index(entry), folder))
        return entry, len(pairs)
    return entry, add_source(entries, entry, folder)


def remove_sources(entries: list[dict[str, Any]], indexes: Sequence[int]) -> list[dict[str, Any]]:
    """Remove the sources at ``indexes`` (each must exist); returns the removed entries."""
    for i in indexes:
        if not 0 <= i < len(entries):
            raise UnetslError(f"no data source {i}: the config has {len(entries)} "
                              f"(0 to {len(entries) - 1})" if entries else
                              f"no data source {i}: the config has none")
    removed = [entries[i] for i in sorted(set(indexes))]
    for i in sorted(set(indexes), reverse=True):
        del entries[i]
    return removed


class AttachDialogue:
    """The original's attach menu as a state machine over typed lines.

    entries : the config's current "data sources" (copied; see :attr:`entries`).
    folder : the config's folder (paths are stored relative to it).
    cwd : where typed relative paths start (the working directory).
    """

    def __init__(self, entries: Sequence[Mapping[str, Any]], folder: str | os.PathLike,
                 cwd: str | os.PathLike | None = None, n_labels: int | None = None):
        self.entries: list[dict[str, Any]] = copy.deepcopy([dict(e) for e in entries])
        self.n_labels = n_labels  # the model's output channels, checked against the labeller
        self.folder = Path(folder)
        self.cwd = Path(cwd) if cwd is not None else Path.cwd()
        self.state = "main"
        self.kind = PAIRED
        self.typed: list[str] = []  # folders typed for the source being added
        self.angles: list[float] = []
        self.done = False
        self.save = False
        self._saved = copy.deepcopy(self.entries)  # what the config holds: "changed" compares

    @property
    def changed(self) -> bool:
        """Sources were added or removed since the dialogue began."""
        return self.entries != self._saved

    def back(self) -> list[str]:
        """Esc: one step back, never losing what was added. From a question about a source,
        back to the menu (that source is dropped); from the menu, to the save question when
        something changed, else finished; from the save question, finished without saving."""
        if self.state in ("main", "save") and not (self.state == "main" and self.changed):
            self.done, self.save = True, False
            return []
        if self.state == "main":
            self.state = "save"
            return []
        dropped = self.state != "remove"
        self.state, self.typed, self.angles = "main", [], []
        return ["back to the menu" + (" (the source being added was dropped)" if dropped
                                      else "")]

    # --- prompts ---------------------------------------------------------------------------
    def prompt(self) -> Prompt:
        """The question to ask now."""
        state = self.state
        if state == "main":
            return Prompt(tuple(MAIN_LINES), "...")
        if state == "images":
            return Prompt((), "enter images directory: ", paths=True)
        if state == "labels":
            return Prompt((), "enter labels directory: ", paths=True)
        if state == "weights":
            return Prompt((), "enter weights directory: ", paths=True)
        if state == "angles":
            return Prompt(("enter a list of angles in degrees (e.g. 90 180), leave blank if "
                           "none",), "")
        if state == "labeller":
            return Prompt(tuple(LABELLER_LINES), "select labeller: ")
        if state == "remove":
            return Prompt(("enter index of source to remove: ", *source_lines(self.entries)),
                          "...")
        if state == "save":
            return Prompt((), "save y/[n]?")
        raise RuntimeError(f"dialogue is finished ({state})")

    # --- answers ---------------------------------------------------------------------------
    def answer(self, text: str) -> list[str]:
        """Take one typed line; returns messages to show (errors, warnings, notes)."""
        handler = getattr(self, f"_on_{self.state}")
        return handler(text)

    def _on_main(self, text: str) -> list[str]:
        choice = text.strip()[:1]
        if choice == "1":
            self.kind, self.typed, self.angles, self.state = PAIRED, [], [], "images"
        elif choice == "2":
            self.kind, self.typed, self.angles, self.state = WEIGHTED, [], [], "images"
        elif choice == "3":
            self.state = "remove"
        else:
            self.state = "save"
        return []

    def _resolve(self, typed: str) -> Path:
        path = Path(os.path.expanduser(os.path.expandvars(typed.strip())))
        return path if path.is_absolute() else self.cwd / path

    def _on_images(self, text: str) -> list[str]:
        if not text.strip():
            return ["error: type the folder of the input images"]
        try:
            list_images(self._resolve(text), role="images")
        except UnetslError as err:
            return [f"error: {err}"]
        self.typed = [text.strip()]
        self.state = "labels"
        return []

    def _stored(self) -> list[str]:
        return [stored_path(t, self.folder, self.cwd) for t in self.typed]

    def _check(self, typed: list[str]) -> list[str]:
        """Check that the folders typed so far pair up: error lines, or warnings when fine."""
        kind = PAIRED if len(typed) == 2 else WEIGHTED
        entry = make_entry(kind, [str(self._resolve(t)) for t in typed], 1)
        try:
            with capture_warnings() as warnings:
                check_source_files(parse_source(entry, len(self.entries), self.folder))
        except UnetslError as err:
            return [f"error: {err}"]
        return warnings

    def _on_labels(self, text: str) -> list[str]:
        if not text.strip():
            return ["error: type the folder of the label images"]
        messages = self._check([*self.typed, text.strip()])
        if messages and messages[0].startswith("error:"):
            return messages
        self.typed.append(text.strip())
        self.state = "angles" if self.kind == PAIRED else "weights"
        return messages

    def _on_weights(self, text: str) -> list[str]:
        if not text.strip():
            return ["error: type the folder of the weight images"]
        messages = self._check([*self.typed, text.strip()])
        if messages and messages[0].startswith("error:"):
            return messages
        self.typed.append(text.strip())
        self.state = "labeller"
        return messages

    def _on_angles(self, text: str) -> list[str]:
        messages = []
        self.angles = []
        for token in text.replace(",", " ").split():
            try:
                self.angles.append(float(token))
            except ValueError:
                messages.append(f"cannot convert {token}")
        self.state = "labeller"
        return messages

    def _on_labeller(self, text: str) -> list[str]:
        choice = text.strip()
        if not (choice.isdigit() and int(choice) < len(LABELLERS)):
            return [f"enter a number between 0 and {len(LABELLERS) - 1}  to select a labeller"]
        entry = make_entry(self.kind, self._stored(), int(choice), self.angles)
        if self.n_labels is not None:
            try:
                check_source_labels(parse_source(entry, len(self.entries), self.folder),
                                    self.n_labels)
            except UnetslError as err:
                return [f"error: {err}"]
        self.entries.append(entry)
        self.state = "main"
        return [f"added source {len(self.entries) - 1}: {json.dumps(entry)}"]

    def _on_remove(self, text: str) -> list[str]:
        try:
            index = int(text.strip())
        except ValueError:
            self.state = "main"
            return []
        if not 0 <= index < len(self.entries):
            return [f"no source {index}"]
        removed = self.entries.pop(index)
        return [f"removed {index}. {json.dumps(removed)}"]

    def _on_save(self, text: str) -> list[str]:
        self.save = text.strip() in YES
        self.done = True
        self.state = "done"
        return []


def complete_path(text: str, cwd: str | os.PathLike | None = None) -> tuple[str, list[str]]:
    """Tab completion of a typed path, like readline's: the completed text and the choices.

    ``~`` and ``$VARS`` are expanded to find the files but the typed text is kept. A single
    match is completed (folders get a trailing "/"); several extend the text to their
    common prefix and are returned as choices.
    """
    base = Path(cwd) if cwd is not None else Path.cwd()
    head, sep, tail = text.rpartition("/")
    folder_text = head + sep
    folder = Path(os.path.expanduser(os.path.expandvars(folder_text))) if folder_text else Path()
    if not folder.is_absolute():
        folder = base / folder
    try:
        names = sorted(n for n in os.listdir(folder) if n.startswith(tail)
                       and (tail.startswith(".") or not n.startswith(".")))
    except OSError:
        return text, []
    if not names:
        return text, []
    if len(names) == 1:
        name = names[0]
        suffix = "/" if (folder / name).is_dir() else ""
        return folder_text + name + suffix, []
    prefix = os.path.commonprefix(names)
    shown = [n + ("/" if (folder / n).is_dir() else "") for n in names]
    return folder_text + prefix, shown
