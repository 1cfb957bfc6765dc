"""Third-party output kept off the user's terminal during an export, unless asked for.

Exporting and validating a package runs Keras, TensorFlow and the bioimage.io packages,
which print progress bars with colour codes (Keras' ``predict``), tf.function retracing
warnings and their own log lines: noise between unetsl's few lines that a newcomer cannot
act on. :func:`quiet_third_party` silences them for the duration and turns the Python
warnings raised meanwhile into one-line messages with their location, which the command
shows as its own ``warning:`` lines. ``verbose=True`` (``--verbose``) leaves all of it on.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["quiet_third_party", "warning_line"]

#: Python loggers of the libraries whose warnings are noise here (TensorFlow's retracing).
QUIET_LOGGERS = ("tensorflow", "absl", "h5py")
#: Warnings about how unetsl calls a library: for its developers, not for the user.
FOR_DEVELOPERS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


def warning_line(message: warnings.WarningMessage) -> str:
    """``file.py:12: UserWarning: first line of the text``: one line, with where it arose."""
    text = " ".join(str(message.message).split()) or message.category.__name__
    return f"{Path(message.filename).name}:{message.lineno}: {message.category.__name__}: {text}"


@contextmanager
def quiet_third_party(verbose: bool = False) -> Iterator[list[str]]:
    """Silence Keras progress bars, TensorFlow/absl warnings and bioimageio's log lines;
    yields a list that, after the block, holds each distinct Python warning meant for users
    as a line (:func:`warning_line`; deprecations are dropped). Everything is restored
    afterwards; ``verbose`` changes nothing.
    """
    caught: list[str] = []
    if verbose:
        yield caught
        return
    import keras

    interactive = keras.config.is_interactive_logging_enabled()
    keras.config.disable_interactive_logging()  # progress bars go to absl's silent INFO
    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    for name in levels:
        logging.getLogger(name).setLevel(logging.ERROR)
    loguru = _loguru()
    if loguru is not None:
        loguru.disable("bioimageio")
    try:
        with warnings.catch_warnings(record=True) as records:  # the filters stay in force
            yield caught
        for record in records:
            line = warning_line(record)
            if not issubclass(record.category, FOR_DEVELOPERS) and line not in caught:
                caught.append(line)
    finally:
        if interactive:
            keras.config.enable_interactive_logging()
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        if loguru is not None:
            loguru.enable("bioimageio")


def _loguru():
    """loguru's logger, which bioimageio.spec/core log through, when installed."""
    try:
        from loguru import logger
    except ImportError:
        return None
    return logger
