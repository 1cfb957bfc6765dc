"""The urwid screen of attach_data_sources: a line-by-line transcript with one input line.

It looks and answers like the original's plain prompts: the questions of
:class:`unetsl.data.attach.AttachDialogue` scroll up as a transcript, the current question is
the caption of the input line, Enter answers it, Tab completes file names (twice shows the
choices, like readline). Esc steps back: from a question about a source to the menu, from
the menu to the save question when sources changed (a second Esc leaves without saving);
Ctrl-C leaves at once without saving.
"""

from __future__ import annotations

import urwid

from unetsl.data.attach import AttachDialogue, complete_path

PALETTE = [
    ("error", "light red", ""),
    ("note", "dark cyan", ""),
    ("header", "black", "light gray"),
]


class AttachMenu:
    """Transcript + input line around an :class:`AttachDialogue` (drivable with keypresses)."""

    def __init__(self, dialogue: AttachDialogue, title: str = "attach data sources"):
        self.dialogue = dialogue
        self.cancelled = False
        self.edit = urwid.Edit()
        self.walker = urwid.SimpleFocusListWalker([])
        self.listbox = urwid.ListBox(self.walker)
        header = urwid.AttrMap(urwid.Text(f"{title}   (tab: complete file names, esc: back, "
                                          "ctrl-c: quit without saving)"), "header")
        self.frame = urwid.Frame(self.listbox, header=header)
        self.widget = self.frame
        self._last_key = ""
        self._ask()

    # --- transcript ------------------------------------------------------------------------
    def _say(self, line: str, style: str | None = None) -> None:
        text = urwid.Text((style, line) if style else line)
        self.walker.insert(len(self.walker) - 1 if self._has_edit() else len(self.walker), text)

    def _has_edit(self) -> bool:
        return bool(self.walker) and self.walker[-1] is self.edit

    def _ask(self) -> None:
        prompt = self.dialogue.prompt()
        for line in prompt.lines:
            self._say(line)
        self.edit.set_caption(prompt.caption)
        self.edit.set_edit_text("")
        if not self._has_edit():
            self.walker.append(self.edit)
        self.walker.set_focus(len(self.walker) - 1)

    def transcript(self) -> list[str]:
        """The lines shown so far (answers included), for tests."""
        return [w.text if isinstance(w, urwid.Text) else w.caption + w.edit_text
                for w in self.walker]

    # --- keys ------------------------------------------------------------------------------
    def keypress(self, size: tuple[int, int], key: str) -> str | None:
        last, self._last_key = self._last_key, key
        if key == "enter":
            self.submit(self.edit.edit_text)
            return None
        if key == "tab":
            self.complete(show_choices=last == "tab")
            return None
        if key == "esc":
            self.back()
            return None
        if key == "ctrl c":
            self.cancelled = True
            raise urwid.ExitMainLoop()
        return self.frame.keypress(size, key)

    def back(self) -> None:
        """Esc: the dialogue's step back (see :meth:`AttachDialogue.back`)."""
        self._say(self.edit.caption + self.edit.edit_text + "  [esc]")
        for message in self.dialogue.back():
            self._say(message, "note")
        if self.dialogue.done:
            raise urwid.ExitMainLoop()
        self._ask()

    def submit(self, text: str) -> None:
        """Answer the current question with ``text``."""
        self._say(self.edit.caption + text)
        for message in self.dialogue.answer(text):
            style = "error" if message.startswith("error") else "note"
            self._say(message, style)
        if self.dialogue.done:
            raise urwid.ExitMainLoop()
        self._ask()

    def complete(self, show_choices: bool = False) -> None:
        """Tab: complete the path being typed; a second tab lists the choices."""
        if not self.dialogue.prompt().paths:
            return
        text, choices = complete_path(self.edit.edit_text, self.dialogue.cwd)
        if text != self.edit.edit_text:
            self.edit.set_edit_text(text)
            self.edit.set_edit_pos(len(text))
        elif choices and show_choices:
            self._say("  ".join(choices), "note")


class _Root(urwid.WidgetWrap):
    def __init__(self, menu: AttachMenu):
        super().__init__(menu.widget)
        self.menu = menu

    def keypress(self, size, key):  # urwid signature
        return self.menu.keypress(size, key)


def run_menu(dialogue: AttachDialogue, title: str = "attach data sources") -> bool:
    """Run the menu full screen until the save question; True when the user chose to save."""
    menu = AttachMenu(dialogue, title)
    loop = urwid.MainLoop(_Root(menu), PALETTE, handle_mouse=False)
    try:
        loop.run()
    except KeyboardInterrupt:
        return False
    return not menu.cancelled and dialogue.done and dialogue.save
