"""Live loss curves in the Train dock: batch losses as they come, epoch values per epoch.

A matplotlib canvas (Qt Agg) fed with the losses the worker process sends (its Keras
callback is in :mod:`unetsl.napari.worker_tasks`); they arrive in a waiting thread, so
:class:`LossCurves` hands every value to the main thread before drawing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from superqt.utils import ensure_main_thread

REDRAW_SECONDS = 0.5  # batch losses redraw at most this often; an epoch always redraws


class LossCurves(FigureCanvasQTAgg):
    """Training loss per batch (thin), and per epoch every logged loss (loss, val_loss, the
    heads' losses); x is in epochs."""

    def __init__(self) -> None:
        super().__init__(Figure(figsize=(4.0, 2.6), tight_layout=True))
        self.axes = self.figure.add_subplot(111)
        self.setMinimumHeight(200)
        self.clear_curves()

    def clear_curves(self) -> None:
        self.batches: list[tuple[float, float]] = []
        self.epochs: dict[str, list[tuple[int, float]]] = {}
        self._drawn = 0.0
        self.redraw()

    # --- values, from the worker process (any thread) -----------------------------
    @ensure_main_thread
    def add_batch(self, x: float, logs: Mapping[str, Any]) -> None:
        """The loss of a batch ending at ``x`` epochs."""
        loss = _number(logs.get("loss"))
        if loss is None:
            return
        self.batches.append((float(x), loss))
        if time.monotonic() - self._drawn > REDRAW_SECONDS:
            self.redraw()

    @ensure_main_thread
    def add_epoch(self, epoch: int, logs: Mapping[str, Any]) -> None:
        """Every loss Keras logged at the end of 0-based ``epoch``."""
        for key, value in logs.items():
            number = _number(value)
            if "loss" in key and number is not None:
                self.epochs.setdefault(key, []).append((int(epoch) + 1, number))
        self.redraw()

    # --- drawing ---------------------------------------------------------------------
    def redraw(self) -> None:
        ax = self.axes
        ax.clear()
        if self.batches:
            x, y = zip(*self.batches, strict=True)
            ax.plot(x, y, lw=0.6, alpha=0.5, color="0.5", label="batch loss")
        for key, points in sorted(self.epochs.items()):
            x, y = zip(*points, strict=True)
            ax.plot(x, y, marker="o", ms=3, label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        if self.batches or self.epochs:
            ax.legend(fontsize=7)
        self.draw_idle()
        self._drawn = time.monotonic()


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
