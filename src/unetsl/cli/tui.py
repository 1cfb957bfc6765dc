"""Full-screen urwid editors, as in the original: one row per key, values as JSON.

``ConfigEditor`` is a plain urwid widget tree so tests can drive it with keypresses;
``edit_values`` runs it on the terminal and returns the edited values, or None on cancel.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import urwid

PALETTE = [
    ("header", "black", "light gray"),
    ("key", "light cyan", ""),
    ("error", "light red", ""),
    ("focus", "black", "light cyan"),
    ("button", "", ""),
]

Validator = Callable[[dict[str, Any]], None]

#: The keys, always on screen (the status line below it shows errors).
HELP = "up/down: move   type: edit   tab: buttons   enter: press button   esc: cancel"


def _as_text(value: Any) -> str:
    """Compact JSON when it fits one row, indented JSON (as the original) otherwise."""
    text = json.dumps(value)
    return text if len(text) <= 60 else json.dumps(value, indent=2)


class ConfigEditor:
    """Rows of ``key : JSON value`` with cancel / finish buttons and a status line.

    Finish parses every value as JSON and runs ``validate`` on the result; any error
    is shown in the status line and the offending row gets the focus, so a typo never
    crashes the program or loses the other edits.
    """

    def __init__(self, values: Mapping[str, Any], title: str = "update settings",
                 finish_label: str = "finished", validate: Validator | None = None):
        self.validate = validate
        self.result: dict[str, Any] | None = None
        self.done = False
        self._row = 0  # the row to return to from the buttons with tab
        self.edits: dict[str, urwid.Edit] = {}
        rows: list[urwid.Widget] = []
        for key, value in values.items():
            edit = urwid.Edit(multiline=True, edit_text=_as_text(value))
            self.edits[key] = edit
            rows.append(urwid.Columns([
                ("weight", 1, urwid.Text(("key", key))),
                ("weight", 2, urwid.AttrMap(edit, None, "focus")),
            ], dividechars=1))
        self.cancel_button = urwid.Button("cancel", on_press=lambda _b: self.cancel())
        self.finish_button = urwid.Button(finish_label, on_press=lambda _b: self.finish())
        buttons = urwid.Columns([
            ("weight", 1, urwid.AttrMap(self.cancel_button, "button", "focus")),
            ("weight", 1, urwid.AttrMap(self.finish_button, "button", "focus")),
        ], dividechars=4)
        self.buttons = buttons
        self.help = urwid.Text(HELP)
        self.status = urwid.Text("")
        self.walker = urwid.SimpleFocusListWalker([*rows, urwid.Divider(), buttons])
        self.listbox = urwid.ListBox(self.walker)
        header = urwid.AttrMap(urwid.Text(title), "header")
        footer = urwid.Pile([urwid.AttrMap(self.help, "header"), self.status])
        self.frame = urwid.Frame(self.listbox, header=header, footer=footer)
        self.widget = urwid.AttrMap(self.frame, None)

    # actions ---------------------------------------------------------------------
    def cancel(self) -> None:
        self.result = None
        self.done = True
        raise urwid.ExitMainLoop()

    def finish(self) -> None:
        values: dict[str, Any] = {}
        for index, (key, edit) in enumerate(self.edits.items()):
            try:
                values[key] = json.loads(edit.edit_text)
            except json.JSONDecodeError as err:  # the whole message: what and where
                self._show_error(index, f'"{key}": invalid JSON: {err}; fix it or press esc '
                                        "to cancel")
                return
        if self.validate is not None:
            try:
                self.validate(values)
            except ValueError as err:
                bad = next((i for i, k in enumerate(self.edits) if f'"{k}"' in str(err)), None)
                self._show_error(bad, str(err))
                return
        self.result = values
        self.done = True
        raise urwid.ExitMainLoop()

    def _show_error(self, row: int | None, message: str) -> None:
        self.status.set_text(("error", message))
        if row is not None:
            self.walker.set_focus(row)

    def keypress(self, size: tuple[int, int], key: str) -> str | None:
        """Global keys: tab jumps to the finish button (and back), esc cancels; up (or
        shift-tab) from the buttons returns to the last row, whatever urwid would do."""
        on_buttons = self.walker.focus == len(self.walker) - 1
        if key == "tab" and not on_buttons:
            self.walker.set_focus(len(self.walker) - 1)
            self.buttons.focus_position = 1
            return None
        if on_buttons and self.edits and key in ("up", "shift tab", "tab"):
            self.walker.set_focus(len(self.edits) - 1 if key == "up" else self._row)
            return None
        if key == "esc":
            self.cancel()
        if not on_buttons:
            self._row = self.walker.focus
        return self.widget.keypress(size, key)


class _Root(urwid.WidgetWrap):
    def __init__(self, editor: ConfigEditor):
        super().__init__(editor.widget)
        self.editor = editor

    def keypress(self, size, key):  # noqa: D401 - urwid signature
        return self.editor.keypress(size, key)


def edit_values(values: Mapping[str, Any], title: str = "update settings",
                finish_label: str = "finished", validate: Validator | None = None
                ) -> dict[str, Any] | None:
    """Open the editor full screen; the edited values, or None when cancelled."""
    editor = ConfigEditor(values, title=title, finish_label=finish_label, validate=validate)
    loop = urwid.MainLoop(_Root(editor), PALETTE, handle_mouse=False)
    try:
        loop.run()
    except KeyboardInterrupt:
        return None
    return editor.result
