"""The original's training logs, byte-for-byte in layout, and a PNG of the training curves.

Files (``<name>`` = the model's base name, ``<id>`` = the run id, milliseconds since the
Unix epoch as lowercase hex):

- ``training-log_<name>-<id>.txt``, the epoch log::

      #training model: <model file>
      #input: <model input tensor>
      #output: <model output tensor(s)>
      #optimiser: <optimizer object>
      #epoch	accuracy	binary_accuracy	loss	val_accuracy	val_binary_accuracy	val_loss
      0	0.4696180522441864	0.9666777849197388	-0.7630274891853333	...

  keys sorted alphabetically, values as Python ``str(float)``, a missing value as -1;

- ``batch-log_<name>-<id>.txt``, one row per training batch, numbered on across epochs,
  with Keras' running means within the epoch and gnuplot column numbers in the header::

      #batch_number	2.accuracy	3.binary_accuracy	4.loss

  For models with several outputs (cascade) the header is the README's layout instead,
  ``#batch_number	batch	cascade_0_accuracy	cascade_0_binary_accuracy	cascade_0_loss
  ...	loss	size``: output X's (accuracy, binary accuracy, loss) triple starts at 0-based
  column 2 + 3X (gnuplot 3 + 3X);
- ``training-log_<name>-<id>.json``, the config the run used.

Lines are appended with one ``write`` each on a file opened for appending, and flushed, so
a killed run leaves whole lines that gnuplot reads while training goes on.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

from unetsl.atomic import atomic_path, atomic_write_text

log = logging.getLogger("unetsl")

__all__ = [
    "BatchLog",
    "CurveLine",
    "EpochLog",
    "LogFiles",
    "expected_log_keys",
    "is_channel_score",
    "curve_lines",
    "curves_figure",
    "format_value",
    "log_files",
    "new_run_id",
    "plot_curves",
    "read_log",
]

EXCLUDED_KEYS = frozenset({"learning_rate", "lr"})  # added by LR callbacks; would shift columns
METRIC_ORDER = ("loss", "accuracy", "binary_accuracy")


class LogFiles:
    """The three files of one run: epoch log, batch log and config snapshot."""

    def __init__(self, folder: Path, name: str, run_id: str):
        self.folder = Path(folder)
        self.name = name
        self.run_id = run_id
        self.epoch_log = self.folder / f"training-log_{name}-{run_id}.txt"
        self.batch_log = self.folder / f"batch-log_{name}-{run_id}.txt"
        self.snapshot = self.folder / f"training-log_{name}-{run_id}.json"


def new_run_id(folder: str | os.PathLike, name: str, now_ms: int | None = None) -> str:
    """Milliseconds since the Unix epoch as lowercase hex (%08x), bumped until unused."""
    stamp = int(time.time() * 1000) if now_ms is None else int(now_ms)
    while True:
        run_id = f"{stamp:08x}"
        files = LogFiles(Path(folder), name, run_id)
        if not files.epoch_log.exists() and not files.batch_log.exists():
            return run_id
        stamp += 1


def log_files(folder: str | os.PathLike, name: str, run_id: str) -> LogFiles:
    return LogFiles(Path(folder), name, run_id)


def format_value(value: Any) -> str:
    """Python's shortest float text, as the original wrote (``str(float(v))``)."""
    try:
        return str(float(value))
    except (TypeError, ValueError):
        return "-1"


_CHANNEL_SCORE = re.compile(r"(^|_)f1_\d+$")


def is_channel_score(key: str) -> bool:
    """A per-channel F1 column (``f1_0``, ``val_membrane_f1_1``): unetsl's, so the epoch log
    puts them after the original's columns and the batch log leaves them out."""
    return bool(_CHANNEL_SCORE.search(key))


def expected_log_keys(output_names: Sequence[str], validation: bool) -> list[str]:
    """The sorted epoch-log keys Keras produces for these outputs, the unetsl metrics compiled."""
    if len(output_names) == 1:
        keys = ["accuracy", "binary_accuracy", "loss"]
    else:
        keys = [f"{name}_{metric}" for name in output_names
                for metric in ("accuracy", "binary_accuracy", "loss")] + ["loss"]
    if validation:
        keys += [f"val_{k}" for k in keys]
    return sorted(keys)


def _write_model_lines(file, model) -> None:
    """The original's #input / #output / #optimiser comment lines, shared by both logs."""
    file.write_line(f"#input: {_describe(model.inputs)}")
    file.write_line(f"#output: {_describe(model.outputs)}")
    file.write_line(f"#optimiser: {model.optimizer!r}")


def _describe(tensors: Any) -> str:
    if isinstance(tensors, (list, tuple)) and len(tensors) == 1:
        tensors = tensors[0]
    return " ".join(repr(tensors).split())


class _AppendLog:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = None

    def _open(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        return self._fd

    def write_line(self, text: str) -> None:
        """One os.write per line on an O_APPEND file: whole lines, in order, at once."""
        os.write(self._open(), (text + "\n").encode("utf-8"))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class EpochLog(keras.callbacks.Callback):
    """The epoch log: ``#training model`` at creation, the model lines when training starts,
    the ``#epoch`` header at the end of the first epoch, then one row per epoch."""

    def __init__(self, path: str | os.PathLike, model_file: str | os.PathLike,
                 comments: Iterable[str] = ()):
        super().__init__()
        self.file = _AppendLog(Path(path))
        self.keys: list[str] | None = None
        self.file.write_line(f"#training model: {model_file}")
        self._comments = list(comments)

    @property
    def path(self) -> Path:
        return self.file.path

    def on_train_begin(self, logs: dict | None = None) -> None:
        _write_model_lines(self.file, self.model)
        for comment in self._comments:
            self.file.write_line(f"#{comment}")

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        if self.keys is None:
            keys = [k for k in logs if k not in EXCLUDED_KEYS]
            self.keys = (sorted(k for k in keys if not is_channel_score(k))
                         + sorted(k for k in keys if is_channel_score(k)))
            self.file.write_line("#epoch\t" + "\t".join(self.keys))
        row = [str(epoch)] + [format_value(logs[k]) if k in logs else "-1" for k in self.keys]
        self.file.write_line("\t".join(row))

    def close(self) -> None:
        self.file.close()


class BatchLog(keras.callbacks.Callback):
    """The batch log: model lines at start, header at the first batch, a row per batch.

    counter : an object with an integer attribute ``batches_done`` (the training state),
        incremented here, so the numbering goes on across epochs and resumed runs.
    batch_size : the "size" column of multi-output logs.
    """

    def __init__(self, path: str | os.PathLike, counter: Any, *, batch_size: int = 1):
        super().__init__()
        self.file = _AppendLog(Path(path))
        self.counter = counter
        self.batch_size = int(batch_size)
        self.keys: list[str] | None = None
        self.readme_layout = False

    @property
    def path(self) -> Path:
        return self.file.path

    def on_train_begin(self, logs: dict | None = None) -> None:
        _write_model_lines(self.file, self.model)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        logs = dict(logs or {})
        if self.keys is None:
            self.readme_layout = len(self.model.outputs) > 1
            keys = [k for k in logs if k not in EXCLUDED_KEYS and not is_channel_score(k)]
            if self.readme_layout:
                self.keys = sorted([*keys, "batch", "size"])
                self.file.write_line("#batch_number\t" + "\t".join(self.keys))
            else:
                self.keys = sorted(keys)
                numbered = [f"{i}.{k}" for i, k in enumerate(self.keys, start=2)]
                self.file.write_line("#batch_number\t" + "\t".join(numbered))
        if self.readme_layout:
            logs["batch"] = batch
            logs["size"] = self.batch_size
        values = [str(logs[k]) if k in ("batch", "size") else
                  format_value(logs[k]) if k in logs else "-1" for k in self.keys]
        self.file.write_line("\t".join([str(self.counter.batches_done), *values]))
        self.counter.batches_done += 1

    def close(self) -> None:
        self.file.close()


def read_log(path: str | os.PathLike) -> tuple[list[str], list[list[float]]]:
    """(keys, rows) of an epoch or batch log; the first column (epoch/batch) is in each row.

    Header keys lose their gnuplot ``N.`` prefix. Comment lines are skipped.
    """
    keys: list[str] = []
    rows: list[list[float]] = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.startswith("#epoch") or line.startswith("#batch_number"):
            keys = [k.split(".", 1)[1] if k[:1].isdigit() and "." in k else k
                    for k in line.split("\t")[1:]]
        elif line and not line.startswith("#"):
            fields = line.split("\t")
            if keys and len(fields) != len(keys) + 1:
                continue  # a line cut short by a crash
            try:
                rows.append([float(v) for v in fields])
            except ValueError:
                continue
    return keys, rows


def _series(paths: Sequence[Path]) -> dict[str, list[tuple[float, float]]]:
    series: dict[str, list[tuple[float, float]]] = {}
    for path in paths:
        if not Path(path).is_file():
            continue
        keys, rows = read_log(path)
        for row in rows:
            for key, value in zip(keys, row[1:]):
                if value != -1 and math.isfinite(value):
                    series.setdefault(key, []).append((row[0], value))
    return series


def _split_key(key: str) -> tuple[bool, str, str]:
    """'val_cascade_0_binary_accuracy' -> (True, 'cascade_0', 'binary_accuracy')."""
    validation = key.startswith("val_")
    base = key[4:] if validation else key
    for metric in ("binary_accuracy", "accuracy", "loss"):
        if base == metric:
            return validation, "", metric
        if base.endswith("_" + metric):
            return validation, base[: -len(metric) - 1], metric
    return validation, "", base


_F1_KEY = re.compile(r"^(?:(?P<output>.+)_)?f1_(?P<channel>\d+)$")


@dataclass(frozen=True)
class CurveLine:
    """How one log column is drawn: its panel, the quantity it measures (the legend names the
    output/head and channel), its colour (one per quantity) and training or validation."""

    key: str
    panel: str
    quantity: str
    colour: int
    validation: bool


def curve_lines(keys: Iterable[str]) -> dict[str, list[CurveLine]]:
    """Panels (loss, accuracy, binary accuracy, F1, ...) -> the lines drawn in them.

    The training and validation columns of one quantity share a colour (solid / dashed), so
    a gap between the two lines reads at a glance; per-channel F1 columns share one panel.
    """
    parsed = []
    for key in keys:
        validation, output, metric = _split_key(key)
        match = _F1_KEY.match(key[4:] if validation else key)
        if match:
            output, metric = match["output"] or "", "f1"
            name = f"{output} channel {match['channel']}" if output else (
                f"channel {match['channel']}")
        else:
            name = output
        parsed.append((key, metric, name, validation))
    panels: dict[str, list[CurveLine]] = {}
    order = [m for m in (*METRIC_ORDER, "f1") if any(p[1] == m for p in parsed)]
    order += sorted({p[1] for p in parsed} - set(order))
    # one colour per output (and F1 channel) in every panel; the total / only output first
    colours = sorted({name for _, _, name, _ in parsed},
                     key=lambda n: (n != "", any(m == "f1" and q == n for _, m, q, _ in parsed),
                                    n))
    for panel in order:
        rows = [p for p in parsed if p[1] == panel]
        named = any(name for _, _, name, _ in rows)
        blank = "total" if named else panel.replace("_", " ")
        panels[panel] = [CurveLine(key, panel, name or blank, colours.index(name), validation)
                         for key, _, name, validation in sorted(rows, key=lambda r: r[0])]
    return panels


def curves_figure(epoch_logs: Sequence[str | os.PathLike], title: str = "") -> Any:
    """The curves as a matplotlib ``Figure`` (no pyplot state), or None with no row yet."""
    series = _series([Path(p) for p in epoch_logs])
    if not series:
        return None
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    panels = curve_lines(series)
    fig = Figure(figsize=(5 * len(panels), 4))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    colours = [f"C{i}" for i in range(10) if i != 7]  # C7 is the gray of the style key
    for ax, (panel, lines) in zip(axes, panels.items()):
        for line in lines:
            xs, ys = zip(*series[line.key])
            xs = tuple(x + 1 for x in xs)  # counted from 1, as the terminal (the logs: from 0)
            ax.plot(xs, ys, "--" if line.validation else "-",
                    color=colours[line.colour % len(colours)],
                    marker="." if len(xs) < 30 else None)
        quantities = {line.quantity: line.colour for line in lines}
        handles = [Line2D([], [], color=colours[c % len(colours)], label=q)
                   for q, c in sorted(quantities.items(), key=lambda item: item[1])]
        kinds = {line.validation for line in lines}
        handles += [Line2D([], [], color="gray", linestyle="--" if v else "-",
                           label="validation" if v else "training") for v in sorted(kinds)]
        ax.legend(handles=handles, fontsize="small")
        ax.set_title("F1 per channel" if panel == "f1" else panel.replace("_", " "))
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_curves(epoch_logs: Sequence[str | os.PathLike], png: str | os.PathLike,
                title: str = "") -> Path | None:
    """A PNG with one panel per metric (loss, accuracy, binary accuracy, F1): one colour per
    output (and channel), training solid and validation dashed, against the epoch. None when
    there is no row yet.

    ``epoch_logs`` are the logs of every run of one training, oldest first (resumed runs).
    """
    fig = curves_figure(epoch_logs, title)
    if fig is None:
        return None
    png = Path(png)
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=100)
    return png


def write_snapshot(path: str | os.PathLike, config_json: str) -> None:
    """The config the run used, as the config file would be written."""
    atomic_write_text(path, config_json)
