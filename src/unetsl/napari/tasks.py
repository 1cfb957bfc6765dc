"""Library calls in a worker thread, so the viewer stays responsive while a model runs.

A widget hands :func:`run_task` a function of the library and what to do with its result
(add layers: that happens in the main thread). :class:`TaskProgress` is the library's
``progress(done, total, ...)`` callback shown as napari's progress bar, with a cancel
button: cancelling raises :class:`Cancelled` in the worker at the next progress call, which
stops the library's loop. Errors become napari notifications (UnetslError is one line
already); nothing is printed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from magicgui.widgets import Container, Label
from superqt.utils import ensure_main_thread

from unetsl.errors import UnetslError
from unetsl.napari.process import Cancelled

__all__ = ["Cancelled", "ScrollingDock", "TaskProgress", "add_tooltips", "notify", "run_task",
           "show_warning_line", "status_label"]


def notify(error: BaseException) -> str:
    """Show ``error`` as a napari notification; returns the text shown."""
    from napari.utils.notifications import show_error, show_info

    if isinstance(error, Cancelled):
        show_info("unetsl: cancelled")
        return "cancelled"
    text = str(error) if isinstance(error, UnetslError) else f"{type(error).__name__}: {error}"
    show_error(f"unetsl: {text}")
    return text


class ScrollingDock(Container):
    """A dock whose fields scroll (``self.form`` holds them): all the docked widgets fit a
    1366x768 screen instead of pushing the time slider and status bar off it (napari docks
    a magicgui container's inner widget, so magicgui's own ``scrollable`` has no effect)."""

    def __init__(self) -> None:
        from qtpy.QtWidgets import QFrame, QScrollArea

        super().__init__(labels=False)
        self.form = Container(labels=True)
        area = QScrollArea()
        area.setWidgetResizable(True)
        area.setFrameShape(QFrame.NoFrame)
        area.setWidget(self.form.native)
        area.setMinimumHeight(90)
        self.native.layout().setContentsMargins(0, 0, 0, 0)
        self.native.layout().addWidget(area)


def add_tooltips(widget: Any, tips: dict[str, str]) -> None:
    """Hover help for a widget's fields (attribute name -> text), where none is set."""
    for name, text in tips.items():
        field = getattr(widget, name)
        if not field.tooltip:
            field.tooltip = text


def status_label() -> Any:
    """A widget's status line: long messages wrap instead of widening the dock until the
    canvas is cropped."""
    label = Label(value="")
    label.native.setWordWrap(True)
    return label


def show_warning_line(text: str) -> str:
    """A warning of the library (sent by the worker process) as a napari notification;
    returns the text for the widget's status line."""
    from napari.utils.notifications import show_warning

    show_warning(f"unetsl: {text}")
    return text


class TaskProgress:
    """``progress(done, total, *more)`` for the library, drawn as a napari progress bar.

    Called in the worker thread; the bar lives in the main thread. ``cancel()`` (the bar's
    cancel button or a widget's) makes the next call raise :class:`Cancelled`.
    """

    def __init__(self, description: str):
        self.description = description
        self.cancelled = threading.Event()
        self.done = 0
        self.total = 0
        self._bar: Any = None
        self._closed = False

    def __call__(self, done: int, total: int, *more: Any) -> None:
        if self.cancelled.is_set():
            raise Cancelled()
        self.done, self.total = int(done), int(total)
        self._show(self.done, self.total)

    def cancel(self) -> None:
        self.cancelled.set()

    @ensure_main_thread
    def _show(self, done: int, total: int) -> None:
        if self._closed:
            return
        if self._bar is None:
            from napari.utils import cancelable_progress

            self._bar = cancelable_progress(total=total, desc=self.description,
                                            cancel_callback=self.cancel)
        if self._bar.total != total:
            self._bar.total = total
        self._bar.update(max(0, done - self._bar.n))

    @ensure_main_thread
    def close(self) -> None:
        """Remove the bar (after the task ended, in whatever way)."""
        self._closed = True
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def run_task(function: Callable[[], Any], on_done: Callable[[Any], None], *,
             on_error: Callable[[BaseException], None] | None = None,
             synchronous: bool = False) -> Any:
    """Run ``function()`` in a napari worker thread, then ``on_done(result)`` in the main
    thread (or ``on_error(exception)``, default: a notification); returns the worker.

    synchronous : run in this thread and return None (tests, scripts); errors other than
        UnetslError and Cancelled are raised.
    """
    handle = on_error or notify
    if synchronous:
        try:
            result = function()
        except (UnetslError, Cancelled) as err:
            handle(err)
            return None
        on_done(result)
        return None
    from napari.qt.threading import create_worker

    worker = create_worker(function, _start_thread=False, _ignore_errors=True)
    worker.returned.connect(on_done)
    worker.errored.connect(handle)
    worker.start()
    return worker
