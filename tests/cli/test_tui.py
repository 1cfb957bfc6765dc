"""The urwid config editor, driven with keypresses (no terminal needed)."""

from __future__ import annotations

import pytest
import urwid

from unetsl.cli.tui import ConfigEditor
from unetsl.config.model_config import Config

SIZE = (100, 60)


def type_text(editor: ConfigEditor, text: str) -> None:
    for ch in text:
        editor.keypress(SIZE, ch)


def test_finish_returns_edited_values():
    editor = ConfigEditor({"depth": 3, "activation": "sigmoid"})
    edit = editor.edits["depth"]
    edit.set_edit_text("")
    editor.walker.set_focus(0)
    type_text(editor, "4")
    editor.keypress(SIZE, "tab")
    with pytest.raises(urwid.ExitMainLoop):
        editor.keypress(SIZE, "enter")
    assert editor.result == {"depth": 4, "activation": "sigmoid"}


def test_invalid_json_keeps_editor_open_and_focuses_row():
    editor = ConfigEditor({"depth": 3, "activation": "sigmoid"})
    editor.edits["activation"].set_edit_text("softmax")  # missing quotes
    editor.keypress(SIZE, "tab")
    editor.keypress(SIZE, "enter")  # no ExitMainLoop: stays open
    assert not editor.done
    assert "activation" in editor.status.text and "invalid JSON" in editor.status.text
    assert editor.walker.focus == 1


def test_validation_error_is_shown_not_raised(tmp_path):
    def validate(values):
        Config(values, path=tmp_path / "m.json").validate()

    editor = ConfigEditor(Config().as_dict(), validate=validate)
    editor.edits["input shape"].set_edit_text("[1, 3, 64]")
    editor.keypress(SIZE, "tab")
    editor.keypress(SIZE, "enter")
    assert not editor.done
    assert '"input shape"' in editor.status.text
    assert editor.walker.focus == 0


def test_cancel_with_escape():
    editor = ConfigEditor({"depth": 3})
    with pytest.raises(urwid.ExitMainLoop):
        editor.keypress(SIZE, "esc")
    assert editor.done and editor.result is None


def test_renders_every_key():
    values = Config().as_dict()
    editor = ConfigEditor(values, title="Update config: m.json")
    canvas = editor.widget.render(SIZE, focus=True)
    screen = b"\n".join(canvas.text).decode()
    assert "Update config: m.json" in screen
    for key in ["input shape", "kernel shape", "n labels", "depth"]:
        assert key in screen


def render(editor: ConfigEditor, size=SIZE) -> str:
    return b"\n".join(editor.widget.render(size, focus=True).text).decode()


def test_help_line_names_the_keys_and_stays_beside_errors():
    editor = ConfigEditor({"depth": 3, "activation": "sigmoid"})
    help_line = next(ln for ln in render(editor).splitlines() if "esc" in ln)
    for key in ("up/down: move", "type: edit", "tab: buttons", "enter: press", "esc: cancel"):
        assert key in help_line
    assert len(help_line.rstrip()) <= 80
    editor.edits["depth"].set_edit_text("[1,")
    editor.keypress(SIZE, "tab")
    editor.keypress(SIZE, "enter")
    screen = render(editor)
    assert "esc: cancel" in screen and "invalid JSON" in screen


def test_whole_json_error_message_is_shown():
    editor = ConfigEditor({"activation": "sigmoid"})
    editor.edits["activation"].set_edit_text('"sigmoid')
    editor.keypress(SIZE, "tab")
    editor.keypress(SIZE, "enter")
    assert ("Unterminated string starting at: line 1 column 1 (char 0)"
            in editor.status.text)
    flat = " ".join(render(editor, (60, 20)).split())  # wrapped, not cut, on a narrow screen
    assert "line 1 column 1 (char 0); fix it or press esc to cancel" in flat


@pytest.mark.parametrize("back", ["up", "shift tab", "tab"])
def test_keys_from_the_buttons_return_to_the_rows(back):
    editor = ConfigEditor({"depth": 3, "activation": "sigmoid", "n labels": 2})
    editor.walker.set_focus(1)
    type_text(editor, "x")  # on the second row
    editor.keypress(SIZE, "tab")
    assert editor.walker.focus == len(editor.walker) - 1  # the buttons
    editor.keypress(SIZE, back)
    assert editor.walker.focus == (2 if back == "up" else 1)


def test_editor_in_a_terminal(tmp_path):
    """The real urwid loop in a pty: tab to the buttons, up back to the last row, edit it,
    tab, enter on "finished"."""
    import fcntl
    import json
    import os
    import pty
    import select
    import struct
    import subprocess
    import sys
    import termios
    import time

    code = ("import json; from unetsl.cli.tui import edit_values; "
            "print('RESULT', json.dumps(edit_values({'activation': 'sigmoid', 'depth': 3})))")
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))  # rows, cols
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=child, stdout=child,
                            stderr=child, close_fds=True, env={**os.environ, "TERM": "xterm"})
    os.close(child)
    output = b""

    def read(seconds: float) -> None:
        nonlocal output
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            ready, _, _ = select.select([main], [], [], 0.05)
            if ready:
                try:
                    output += os.read(main, 65536)
                except OSError:
                    return

    deadline = time.monotonic() + 20
    while b"esc: cancel" not in output and time.monotonic() < deadline:
        read(0.2)
    for key in ("\t", "\x1b[A", "1", "\t", "\r"):
        os.write(main, key.encode())
        read(0.3)
    try:
        proc.wait(timeout=10)
        read(0.5)
    finally:
        proc.kill()
        os.close(main)
    result = [ln for ln in output.decode(errors="replace").splitlines() if "RESULT" in ln]
    assert result and json.loads(result[-1].split("RESULT", 1)[1]) == {
        "activation": "sigmoid", "depth": 31}, output[-500:]
