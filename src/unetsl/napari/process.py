"""The plugin's TensorFlow work in a worker process: napari's process never imports it.

Why: in a napari window drawn by Mesa (most Linux desktops without NVIDIA's driver, VNC,
Open OnDemand) ``import tensorflow`` crashes napari (Mesa's libLLVM against TensorFlow's,
issue 25). So Predict, Train and Inspect send their work to a child process: a fresh Python
interpreter started with ``subprocess`` (neither fork, which would copy Qt and GL state, nor
multiprocessing's spawn, which re-runs the user's script). The child keeps its loaded models
between calls and runs one task at a time (:mod:`unetsl.napari.worker_tasks`, the same
library functions the console scripts call). While it works it sends events: progress,
log records (warnings included), epoch lines, losses; then the result, or the error in one
line. Cancel and Stop reach it at once: a cancelled prediction stops at the next batch,
a stopped training saves -latest after the current batch, as Ctrl-C does.

The two ends talk over ``multiprocessing.connection`` (a Unix socket or Windows pipe with a
random key). The child exits when the connection closes, so it never outlives napari.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable
from multiprocessing.connection import Client, Connection, Listener
from typing import Any

from unetsl.errors import UnetslError
from unetsl.napari.worker_tasks import TASKS

__all__ = ["Cancelled", "WorkerProcess", "serve", "worker"]

KEY_ENV = "UNETSL_WORKER_KEY"
START_SECONDS = 120.0  # a first TensorFlow import on a slow shared disk


class Cancelled(Exception):
    """The user cancelled a running task."""

    def __init__(self) -> None:
        super().__init__("cancelled")


class WorkerProcess:
    """One child process and its connection; :meth:`call` runs a task there.

    A dead child (killed, out of memory) is reported as a one-line error and replaced by a
    new one at the next call.
    """

    def __init__(self, name: str = "worker") -> None:
        self.name = name
        self._process: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._send_lock = threading.Lock()
        self._call_lock = threading.Lock()
        self._count = 0

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the child (if it is not running) and wait until it has connected."""
        if self.running and self._conn is not None:
            return
        self.close()
        key = os.urandom(32)
        listener = Listener(authkey=key)
        env = {**os.environ, KEY_ENV: key.hex(), "TF_CPP_MIN_LOG_LEVEL":
               os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
        env.pop("QT_QPA_PLATFORM", None)
        self._process = subprocess.Popen(
            [sys.executable, "-m", "unetsl.napari.process", str(listener.address)], env=env,
            stdin=subprocess.DEVNULL)
        accepted: list[Connection] = []
        thread = threading.Thread(target=lambda: accepted.append(listener.accept()),
                                  daemon=True)
        thread.start()
        waited = 0.0
        while thread.is_alive() and waited < START_SECONDS and self._process.poll() is None:
            thread.join(0.2)
            waited += 0.2
        listener.close()
        if not accepted:
            code = self._process.poll()
            self.close()
            raise UnetslError(f"the unetsl {self.name} process did not start "
                              + (f"(exit code {code})" if code is not None else
                                 f"within {START_SECONDS:.0f} s"))
        self._conn = accepted[0]

    def call(self, task: str, *, progress: Callable[..., None] | None = None,
             on_event: Callable[..., None] | None = None, **kwargs: Any) -> Any:
        """Run ``task`` (a name in ``worker_tasks.TASKS``) with ``kwargs`` in the child.

        progress : ``progress(done, total, ...)``; raising :class:`Cancelled` in it (a
            cancel button) cancels the task. on_event : ``on_event(kind, *payload)`` for
            every other event ("log", "line", "batch", "epoch"). Raises the task's error
            (UnetslError as it was, others as UnetslError naming the type), or Cancelled.
        """
        with self._call_lock:
            self.start()
            self._count += 1
            self._send(("run", self._count, task, kwargs))
            cancelled = False
            while True:
                kind, *payload = self._receive(task)
                if kind == "progress":
                    try:
                        if progress is not None and not cancelled:
                            progress(*payload)
                    except Cancelled:
                        cancelled = True
                        self.cancel()
                elif kind == "result":
                    return payload[0]
                elif kind == "cancelled":
                    raise Cancelled()
                elif kind == "error":
                    name, message = payload
                    raise UnetslError(message if name == "UnetslError" else
                                      f"{name}: {message}")
                elif on_event is not None:
                    on_event(kind, *payload)

    def cancel(self) -> None:
        """Stop the running task at its next progress step (prediction, inspection)."""
        self._send(("cancel",))

    def stop(self) -> None:
        """Stop a training after the current batch; it saves -latest and returns."""
        self._send(("stop",))

    def close(self) -> None:
        """End the child (closing the connection makes it exit)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._process is not None:
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def _send(self, message: tuple) -> None:
        with self._send_lock:
            if self._conn is None:
                return
            try:
                self._conn.send(message)
            except (OSError, ValueError):
                pass  # the child is gone: the caller's receive says so

    def _receive(self, task: str) -> tuple:
        try:
            assert self._conn is not None
            return self._conn.recv()
        except (EOFError, OSError, AssertionError):
            code = self._process.wait() if self._process is not None else None
            self.close()
            raise UnetslError(f"the unetsl {self.name} process stopped during {task} (exit "
                              f"code {code}; out of memory?); the next run starts a new one"
                              ) from None


_workers: dict[str, WorkerProcess] = {}


def worker(name: str) -> WorkerProcess:
    """The plugin's worker process ``name`` ("training", "prediction"): training has its
    own, so that Predict and Inspect answer while a model trains."""
    if name not in _workers:
        _workers[name] = WorkerProcess(name)
    return _workers[name]


@atexit.register
def _close_all() -> None:
    for process in _workers.values():
        process.close()


# --------------------------------------------------------------------------- the child


class TaskContext:
    """What a task in the child uses to talk back: progress (which raises Cancelled once the
    parent cancelled), events, the stop request of a training, and a cache that outlives
    the task (loaded models)."""

    def __init__(self, send: Callable[[tuple], None]) -> None:
        self.send = send
        self.cancelled = threading.Event()
        self.stop_request: Any = None
        self.stop_pending = False  # Stop pressed before the training could take it
        self.cache: dict[str, Any] = {}

    def progress(self, done: int, total: int, *more: Any) -> None:
        if self.cancelled.is_set():
            raise Cancelled()
        self.send(("progress", int(done), int(total), *more))

    def emit(self, kind: str, *payload: Any) -> None:
        self.send((kind, *payload))

    def stop(self) -> None:
        self.stop_pending = True
        if self.stop_request is not None:
            self.stop_request.request()


class _ForwardLogs(logging.Handler):
    """unetsl's log records (info and up) as "log" events, so warnings reach the viewer."""

    def __init__(self, context: TaskContext) -> None:
        super().__init__(logging.INFO)
        self.context = context

    def emit(self, record: logging.LogRecord) -> None:
        self.context.emit("log", record.levelname.lower(), record.getMessage())


def serve(conn: Connection) -> None:
    """The child's loop: a reader thread takes cancel/stop at once, tasks run in order."""


    lock = threading.Lock()

    def send(message: tuple) -> None:
        with lock:
            conn.send(message)

    context = TaskContext(send)
    requests: queue.Queue = queue.Queue()

    def read() -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                os._exit(0)  # napari closed the connection or exited
            if message[0] == "cancel":
                context.cancelled.set()
            elif message[0] == "stop":
                context.stop()
            else:
                requests.put(message)

    threading.Thread(target=read, daemon=True).start()
    logger = logging.getLogger("unetsl")
    logger.setLevel(logging.INFO)
    logger.addHandler(_ForwardLogs(context))
    while True:
        _, number, task, kwargs = requests.get()
        context.cancelled.clear()
        context.stop_request = None
        try:
            send(("result", TASKS[task](context, **kwargs)))
        except Cancelled:
            send(("cancelled",))
        except UnetslError as err:
            send(("error", "UnetslError", str(err)))
        except Exception as err:  # shown as one line in napari, the traceback here
            traceback.print_exc()
            send(("error", type(err).__name__, " ".join(str(err).split())[:300]))
        finally:
            context.stop_pending = False


def main() -> None:
    """``python -m unetsl.napari.process ADDRESS`` (the key in UNETSL_WORKER_KEY)."""
    address = sys.argv[1]
    key = bytes.fromhex(os.environ.pop(KEY_ENV))
    serve(Client(address, authkey=key))


if __name__ == "__main__":
    main()
