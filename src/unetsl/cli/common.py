"""What every console script shares: one-line errors, warnings, -D and --gpus options."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from unetsl.errors import UnetslError

# Keep TensorFlow's C++ start-up chatter out of the user's terminal and Slurm logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def setup_logging() -> None:
    """Library warnings reach the user as ``warning: ...`` lines on stderr."""
    logger = logging.getLogger("unetsl")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logging.addLevelName(logging.WARNING, "warning")
    logging.addLevelName(logging.INFO, "info")


def one_line_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn UnetslError (and a missing/unreadable file) into ``error: ...`` and exit 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        setup_logging()
        try:
            return func(*args, **kwargs)
        except UnetslError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(2)
        except (FileNotFoundError, IsADirectoryError, PermissionError) as err:
            click.echo(f"error: {err.filename or ''}: {err.strerror}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


def interactive(batch: bool) -> bool:
    """The urwid editor opens only without -b and when a person is at a terminal."""
    return not batch and sys.stdin.isatty() and sys.stdout.isatty()


define_option = click.option(
    "-D", "--define", "overrides", multiple=True, metavar='"key=json"',
    help='Override a config key, value as JSON: -D "batch size=128" -D "stride=[0,3,16,16]".',
)
batch_option = click.option(
    "-b", "--batch", is_flag=True, help="Batch mode: no interactive editor (Slurm, scripts).",
)
gpus_option = click.option(
    "--gpus", type=int, default=lambda: int(os.environ.get("GPUS", "1") or 1), show_default="$GPUS or 1",
    help="Number of GPUs to use (also read from the GPUS environment variable).",
)
