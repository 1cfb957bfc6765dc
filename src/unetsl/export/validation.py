"""Validating a written bioimage.io package with the official packages, and their findings
as one line each (``located``)."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unetsl.errors import UnetslError

__all__ = ["located", "one_line", "summary_lines", "validate_package"]


def validate_package(path: str | os.PathLike) -> tuple[str, str, list[str]]:
    """Validate with the official bioimage.io packages: (status, tool, messages).

    With ``bioimageio.core`` installed the model is also run on its test input with every
    weight format (status "passed" or "failed"); with ``bioimageio.spec`` alone the
    description and files are checked (status "valid-format" or "failed"). UnetslError when
    neither is installed (``pip install 'unetsl[bioimageio]'``).
    """
    try:
        from bioimageio.core import test_model

        def run(source):
            return test_model(source)

        tool = "bioimageio.core test"
    except ImportError:
        try:
            from bioimageio.spec import load_description
        except ImportError:
            raise UnetslError("validation needs the bioimageio.spec package: pip install "
                              "'unetsl[bioimageio]'") from None

        def run(source):
            return load_description(source, perform_io_checks=True).validation_summary

        tool = "bioimageio.spec"

    source = Path(path).resolve()
    # bioimageio.core unpacks TensorFlow weights into the working directory: run it in a
    # temporary one so that nothing is left beside the user's files.
    previous = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="unetsl-validate-") as scratch:
        os.chdir(scratch)
        try:
            summary = run(source)
        finally:
            os.chdir(previous)
    return str(summary.status), tool, summary_lines(summary, source)


def summary_lines(summary: Any, source: str | os.PathLike) -> list[str]:
    """One line per error and per warning of a validation summary. bioimageio.core files
    its successes ("all elements agree with expected values") as warnings of severity INFO:
    those are left out, so that a ``warning:`` line always means something to look at."""
    messages = []
    offline_hint = ("(bioimageio.spec looks GitHub users up online; without a network the "
                    "check fails: export without --github-user, or validate online)")
    for detail in summary.details:
        for err in detail.errors:
            messages.append(located("error", source, err.loc, err.msg))
            if "Name or service not known" in err.msg or "connect" in err.msg.lower():
                messages.append(offline_hint)
        for warning in detail.warnings:
            if getattr(warning, "severity", logging.WARNING) >= logging.WARNING:
                messages.append(located("warning", source, warning.loc, warning.msg))
    return messages


def located(kind: str, package: str | os.PathLike, loc: Sequence[Any], message: str) -> str:
    """One line ``kind: <package>/rdf.yaml[ field.path]: message``: the validator gives an
    empty location for whole-description findings, which printed as ``warning: : ...``."""
    field = ".".join(str(p) for p in loc)
    where = f"{Path(package).name}/rdf.yaml" + (f" {field}" if field else "")
    return one_line(f"{kind}: {where}: {message}")


def one_line(text: str) -> str:
    """``text`` on one line of at most 240 characters."""
    line = " ".join(text.split())
    return line if len(line) <= 240 else line[:237] + "..."
