"""Every command line the README shows parses with today's options, so that the docs and the
commands cannot drift apart. The lines are read from README.md (indented blocks), their
placeholders made concrete (``[--tolerance 1]`` -> ``--tolerance 1``, ``a|b`` -> ``a``), and
each is parsed by its click command without running it."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import click
import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
SETUP = README.with_name("setup.py")
SCRIPTS = dict(re.findall(r'"(\w+)": "(unetsl\.cli\.\w+):main"', SETUP.read_text()))


def _readme_commands() -> list[tuple[int, str]]:
    """(line number, command) for every indented README line that starts with a script;
    lines ending in a backslash, and syntax lines wrapped onto lines starting with "[",
    continue on the next line."""
    found: list[tuple[int, str]] = []
    pending = ""
    for number, line in enumerate(README.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.startswith("    "):
            pending = ""
            continue
        text = line.strip().removeprefix("$ ")
        if pending:
            text, pending = pending + " " + text, ""
            found.pop()
        elif text.startswith("[") and found and found[-1][0] == number - 1:
            text = found.pop()[1] + " " + text  # a wrapped syntax line
        elif text.split(" ", 1)[0] not in SCRIPTS:
            continue
        if text.endswith("\\"):
            pending = text[:-1].strip()
        found.append((number, text))
    return found


def _concrete(text: str) -> list[str]:
    """The argument list of a README syntax line, placeholders made concrete."""
    args = []
    for token in shlex.split(text.replace("[", " ").replace("]", " "), comments=True):
        if token == "...":
            continue
        if re.fullmatch(r"[A-Z]{1,3}", token):  # a number placeholder: N, K, PX
            token = "1"
        if "|" in token and not token.startswith(("-", "/")) and "://" not in token:
            token = token.split("|")[0]
        args.append(token)
    return args


COMMANDS = _readme_commands()


def test_the_readme_shows_every_command():
    shown = {text.split(" ", 1)[0] for _, text in COMMANDS}
    assert set(SCRIPTS) <= shown, sorted(set(SCRIPTS) - shown)


@pytest.mark.parametrize("line, text", COMMANDS, ids=[f"README:{n}" for n, _ in COMMANDS])
def test_readme_command_parses(line, text):
    name, *args = _concrete(text)
    command = importlib.import_module(SCRIPTS[name]).main
    try:
        if isinstance(command, click.Group):  # the chained cerberus group: each subcommand
            segments, current = [], None
            for arg in args:
                if arg in command.commands and (current is None or not current[1]
                                                or not current[1][-1].startswith("-")):
                    current = (arg, [])
                    segments.append(current)
                elif current is not None:
                    current[1].append(arg)
            assert segments, f"README:{line}: no cerberus subcommand in {text!r}"
            for sub, sub_args in segments:
                command.commands[sub].make_context(sub, sub_args)
        else:
            command.make_context(name, args)
    except click.exceptions.Exit:  # --help and friends
        pass
    except click.UsageError as err:
        pytest.fail(f"README line {line}: {text!r} does not parse: {err.format_message()}")
