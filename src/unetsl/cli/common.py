"""What every console script shares: one-line errors, warnings, -D and --gpus options."""

from __future__ import annotations

import errno
import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import click

from unetsl.errors import UnetslError
from unetsl.quiet_tensorflow import import_tensorflow_quietly

# Keep TensorFlow's C++ start-up chatter out of the user's terminal and Slurm logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class _LowerLevelFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def setup_logging() -> None:
    """Library warnings reach the user as ``warning: ...`` lines on stderr."""
    logger = logging.getLogger("unetsl")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_LowerLevelFormatter())
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.INFO)
    # Keras' advice to prefer .keras over .h5 (we keep .h5 on purpose) and similar noise.
    logging.getLogger("absl").setLevel(logging.ERROR)


def one_line_errors(func: Callable[..., Any] | None = None, *, tensorflow: bool = True):
    """Turn UnetslError (and a missing/unreadable file) into ``error: ...`` and exit 2.

    Use as ``@one_line_errors``, or ``@one_line_errors(tensorflow=False)`` for commands
    that never touch TensorFlow (they then start in a fraction of a second).
    """
    if func is None:
        return functools.partial(one_line_errors, tensorflow=tensorflow)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        setup_logging()
        if tensorflow:
            import_tensorflow_quietly()
        previous = _catch_sigterm()
        try:
            return func(*args, **kwargs)
        except UnetslError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(2)
        except (FileNotFoundError, IsADirectoryError, PermissionError) as err:
            click.echo(f"error: {err.filename or ''}: {err.strerror}", err=True)
            sys.exit(2)
        except Terminated as stop:
            click.echo(f"terminated (signal {stop.signum}); no partial output was kept", err=True)
            sys.exit(128 + stop.signum)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except OSError as err:
            if err.errno not in _FULL:
                raise
            click.echo(f"error: {err.filename or 'output'}: {os.strerror(err.errno)} while "
                       "writing; files written before are intact and no partial file was kept: "
                       "free space (or raise the limit) and run again", err=True)
            sys.exit(2)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return wrapper


#: "No space left on device", "File too large" (a size limit), "Disk quota exceeded".
_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


class Terminated(KeyboardInterrupt):
    """SIGTERM as an exception, so that temporary files are removed on the way out."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(signum)


def _catch_sigterm() -> Any:
    """SIGTERM (kill, Slurm's time limit) unwinds like Ctrl-C; returns the old handler, or
    None outside the main thread (where signals cannot be caught)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


def interactive(batch: bool) -> bool:
    """The urwid editor opens only without -b and when a person is at a terminal."""
    return not batch and sys.stdin.isatty() and sys.stdout.isatty()


def _gpus_from_environment() -> int:
    """GPUS as the original's Slurm scripts set it; an unusable value means 1."""
    text = os.environ.get("GPUS", "").strip()
    try:
        return max(1, int(text)) if text else 1
    except ValueError:
        logging.getLogger("unetsl").warning(f"GPUS={text!r} is not a number; using 1 GPU")
        return 1


define_option = click.option(
    "-D", "--define", "overrides", multiple=True, metavar='"key=json"',
    help='Override a config key, value as JSON: -D "batch size=128" -D "stride=[0,3,16,16]".',
)
batch_option = click.option(
    "-b", "--batch", is_flag=True, help="Batch mode: no interactive editor (Slurm, scripts).",
)
gpus_option = click.option(
    "--gpus", type=int, default=lambda: _gpus_from_environment(), show_default="$GPUS or 1",
    help="Number of GPUs to use (also read from the GPUS environment variable).",
)
