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
