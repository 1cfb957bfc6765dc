"""attach_data_sources: the dialogue, the urwid menu (keys in, screen out; in tmux too), flags."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import tifffile
import urwid

from unetsl.cli.attach_menu import AttachMenu
from unetsl.config.model_config import Config
from unetsl.data.attach import MAIN_LINES, AttachDialogue, complete_path
from unetsl.data.synthetic import write_dataset


def script(name: str) -> str:
    """The console script of the running interpreter's environment."""
    return str(Path(sys.executable).parent / name)

SIZE = (100, 40)
PAIRED_MULTICLASS = {"source type": "paired directories", "input folders": ["images"],
                     "label folders": ["labels"], "rotations": [], "rotation unit": "degrees",
                     "labeller": "multiclass labels"}
#: What a user of the original typed to add a paired multiclass source and save.
ORIGINAL_KEYS = ["1", "images", "labels", "", "1", "", "y"]


@pytest.fixture
def project(tmp_path):
    write_dataset(tmp_path, kind="2d", n_images=2, shape=(3, 32, 32))
    for label in (tmp_path / "labels").glob("*.tif"):  # membrane only: the model's 1 channel
        tifffile.imwrite(label, tifffile.imread(label) & 1, imagej=True, metadata={"axes": "TYX"})
    weights = tmp_path / "weights"
    weights.mkdir()
    for i in range(2):
        tifffile.imwrite(weights / f"w-{i}.tif", np.ones((3, 32, 32), np.float32), imagej=True,
                         metadata={"axes": "TYX"})
    Config(path=tmp_path / "m.json").save()
    return tmp_path


def answers(dialogue, *lines):
    said = []
    for line in lines:
        said += dialogue.answer(line)
    return said


def saved_sources(project):
    return json.loads((project / "m.json").read_text())["data sources"]


# --- the dialogue -----------------------------------------------------------------------------

def test_original_keystrokes_add_a_paired_multiclass_source(project):
    dialogue = AttachDialogue([], project, cwd=project)
    assert dialogue.prompt().lines == tuple(MAIN_LINES) and dialogue.prompt().caption == "..."
    prompts = []
    for line in ORIGINAL_KEYS:
        prompts.append(dialogue.prompt())
        dialogue.answer(line)
    assert [p.caption for p in prompts] == [
        "...", "enter images directory: ", "enter labels directory: ", "", "select labeller: ",
        "...", "save y/[n]?"]
    assert prompts[3].lines == ("enter a list of angles in degrees (e.g. 90 180), leave "
                                "blank if none",)
    assert prompts[4].lines == ("labellers: ", "  -  0 :  region labels",
                                "  -  1 :  multiclass labels", "  -  2 :  categorical labels",
                                "  -  3 :  double membrane labels", "  -  4 :  linear labels",
                                "  -  5 :  instance labels")  # unetsl's own, after them
    assert prompts[1].paths and prompts[2].paths and not prompts[3].paths
    assert dialogue.done and dialogue.save
    assert dialogue.entries == [PAIRED_MULTICLASS]


def test_weighted_source_angles_and_labeller_retry(project):
    dialogue = AttachDialogue([], project, cwd=project)
    assert answers(dialogue, "2", "images", "labels") == []
    assert dialogue.prompt().caption == "enter weights directory: "
    assert answers(dialogue, "weights") == []
    said = answers(dialogue, "7", "x")
    assert said == ["enter a number between 0 and 5  to select a labeller"] * 2
    answers(dialogue, "4")
    assert dialogue.entries[0] == {
        "source type": "weighted directories", "input folders": ["images"],
        "label folders": ["labels"], "weights folders": ["weights"], "rotations": [],
        "rotation unit": "degrees", "labeller": "linear labels"}
    answers(dialogue, "1", "images", "labels")
    said = answers(dialogue, "0.5, 90 x", "0")
    assert said[0] == "cannot convert x" and said[1].startswith("added source 1: ")
    assert dialogue.entries[1]["rotations"] == [0.5, 90.0]
    assert dialogue.entries[1]["labeller"] == "region labels"


def test_remove_menu(project):
    entries = [dict(PAIRED_MULTICLASS, labeller=name)
               for name in ("region labels", "linear labels")]
    dialogue = AttachDialogue(entries, project, cwd=project)
    answers(dialogue, "3")
    prompt = dialogue.prompt()
    assert prompt.lines[0] == "enter index of source to remove: "
    assert prompt.lines[1] == f"0. {json.dumps(entries[0])}"
    assert answers(dialogue, "5") == ["no source 5"]
    assert answers(dialogue, "0") == [f"removed 0. {json.dumps(entries[0])}"]
    assert dialogue.prompt().lines[1] == f"0. {json.dumps(entries[1])}"  # the remove menu again
    answers(dialogue, "")  # back to the main menu
    assert dialogue.prompt().lines == tuple(MAIN_LINES)
    answers(dialogue, "", "n")
    assert dialogue.done and not dialogue.save and dialogue.entries == [entries[1]]


@pytest.mark.parametrize("answer", ["y", "Y", "yes", "Yes", "YES"])
def test_save_answers(project, answer):
    dialogue = AttachDialogue([], project)
    answers(dialogue, "", answer)
    assert dialogue.save


@pytest.mark.parametrize("answer", ["", "n", "no", "yeah", "x"])
def test_anything_else_does_not_save(project, answer):
    dialogue = AttachDialogue([], project)
    answers(dialogue, "stop", answer)
    assert dialogue.done and not dialogue.save


def test_bad_folders_are_refused_and_asked_again(project):
    (project / "empty").mkdir()
    (project / "small").mkdir()
    tifffile.imwrite(project / "small" / "epi-000.tif", np.zeros((3, 16, 16), np.uint8),
                     imagej=True, metadata={"axes": "TYX"})
    dialogue = AttachDialogue([], project, cwd=project)
    answers(dialogue, "1")
    for typed, needle in [("nowhere", "does not exist"), ("empty", "holds no .tif"),
                          ("m.json", "is not a folder")]:
        (said,) = answers(dialogue, typed)
        assert said.startswith("error: ") and needle in said and typed in said
        assert dialogue.prompt().caption == "enter images directory: "
    answers(dialogue, "images")
    (said,) = answers(dialogue, "small")
    assert "epi-000.tif has (t, c, z, y, x) = (3, 1, 1, 32, 32)" in said
    assert "(3, 1, 1, 16, 16)" in said
    assert dialogue.prompt().caption == "enter labels directory: "
    (said,) = answers(dialogue, "empty")
    assert "holds no .tif" in said
    assert answers(dialogue, "labels") == []
    assert dialogue.prompt().lines == ("enter a list of angles in degrees (e.g. 90 180), "
                                       "leave blank if none",)


def test_unlabelled_images_are_a_warning_in_the_transcript(project):
    (project / "few").mkdir()
    shutil.copy(project / "labels" / "epi-001.tif", project / "few" / "lbl-1.tif")
    dialogue = AttachDialogue([], project, cwd=project)
    (said,) = answers(dialogue, "1", "images", "few")
    assert said.startswith("warning: ") and "epi-000.tif" in said


def test_paths_typed_elsewhere_are_stored_relative_to_the_config(project):
    elsewhere = project / "sub"
    elsewhere.mkdir()
    dialogue = AttachDialogue([], project, cwd=elsewhere)
    answers(dialogue, "1", "../images", str(project / "labels"), "", "1")
    assert dialogue.entries == [PAIRED_MULTICLASS]


# --- the urwid menu ---------------------------------------------------------------------------

def press(menu, *keys):
    for key in keys:
        if len(key) > 1 and key not in ("enter", "tab", "esc", "backspace", "ctrl c"):
            for ch in key:
                menu.keypress(SIZE, ch)
        else:
            menu.keypress(SIZE, key)


def screen(menu):
    canvas = menu.widget.render(SIZE, focus=True)
    return "\n".join(line.decode().rstrip() for line in canvas.text)


def test_menu_widget_with_the_original_keystrokes(project):
    dialogue = AttachDialogue([], project, cwd=project)
    menu = AttachMenu(dialogue)
    assert "3. remove existing sources." in screen(menu)
    press(menu, "1", "enter", "images", "enter", "labels", "enter", "enter", "1", "enter",
          "enter")
    shown = screen(menu)
    assert "enter labels directory: labels" in shown and "select labeller: 1" in shown
    assert 'added source 0: {"source type": "paired directories"' in shown
    assert shown.rstrip().endswith("save y/[n]?")
    with pytest.raises(urwid.ExitMainLoop):
        press(menu, "y", "enter")
    assert dialogue.save and dialogue.entries == [PAIRED_MULTICLASS]


def test_menu_tab_completion_and_escape(project):
    dialogue = AttachDialogue([], project, cwd=project)
    menu = AttachMenu(dialogue)
    press(menu, "tab")  # no completion in the type menu
    assert menu.edit.edit_text == ""
    press(menu, "1", "enter", "im", "tab")
    assert menu.edit.edit_text == "images/"
    press(menu, "enter", "la", "tab")
    assert menu.edit.edit_text == "labels"  # common prefix of labels/ and labels-dist/
    press(menu, "tab")
    assert "labels/  labels-dist/" in menu.transcript()
    press(menu, "backspace", "backspace", "backspace", "backspace", "backspace", "backspace")
    assert menu.edit.edit_text == ""
    press(menu, "esc")  # back to the menu: nothing was added, nothing to save
    assert "back to the menu (the source being added was dropped)" in menu.transcript()
    assert dialogue.state == "main" and not dialogue.done
    with pytest.raises(urwid.ExitMainLoop):
        press(menu, "esc")  # at the menu, with nothing changed: leave
    assert dialogue.done and not dialogue.save


def test_escape_steps_back_without_losing_added_sources(project):
    """Esc used to be the only way out of a question and dropped every unsaved source
    (issue 28 item 7); now it goes back one step and asks before leaving."""
    dialogue = AttachDialogue([], project, cwd=project)
    menu = AttachMenu(dialogue)
    press(menu, "1", "enter", "images", "enter", "labels", "enter", "enter", "1", "enter")
    assert dialogue.entries == [PAIRED_MULTICLASS]
    press(menu, "2", "enter", "images", "enter", "esc")  # a second source, abandoned
    assert dialogue.state == "main" and dialogue.entries == [PAIRED_MULTICLASS]
    press(menu, "esc")  # from the menu with an unsaved source: the save question
    assert screen(menu).rstrip().endswith("save y/[n]?")
    with pytest.raises(urwid.ExitMainLoop):
        press(menu, "y", "enter")
    assert dialogue.save and dialogue.entries == [PAIRED_MULTICLASS]
    again = AttachMenu(AttachDialogue([], project, cwd=project))
    press(again, "1", "enter", "images", "enter", "labels", "enter", "enter", "1", "enter")
    press(again, "esc")
    with pytest.raises(urwid.ExitMainLoop):
        press(again, "esc")  # Esc at the save question: leave without saving
    assert again.dialogue.done and not again.dialogue.save
    ctrl_c = AttachMenu(AttachDialogue([], project, cwd=project))
    with pytest.raises(urwid.ExitMainLoop):
        press(ctrl_c, "1", "enter", "ctrl c")
    assert ctrl_c.cancelled


def test_complete_path(tmp_path, monkeypatch):
    (tmp_path / "images").mkdir()
    (tmp_path / "img.tif").write_text("")
    (tmp_path / ".hidden").mkdir()
    assert complete_path("ima", tmp_path) == ("images/", [])
    assert complete_path("im", tmp_path) == ("im", ["images/", "img.tif"])
    assert complete_path("", tmp_path)[1] == ["images/", "img.tif"]
    assert complete_path(".h", tmp_path) == (".hidden/", [])
    assert complete_path("zz", tmp_path) == ("zz", [])
    assert complete_path(f"{tmp_path}/ima", "/") == (f"{tmp_path}/images/", [])
    monkeypatch.setenv("PROJECT", str(tmp_path))
    assert complete_path("$PROJECT/ima", "/") == ("$PROJECT/images/", [])


# --- the console script, for real in tmux -----------------------------------------------------

def _tmux(*args, socket):
    return subprocess.run(["tmux", "-L", socket, *args], capture_output=True, text=True,
                          timeout=10)


def _wait_screen(socket, needle, timeout):
    deadline = time.monotonic() + timeout
    shown = ""
    while time.monotonic() < deadline:
        shown = _tmux("capture-pane", "-p", "-t", "attach", socket=socket).stdout
        if needle in shown:
            return shown
        time.sleep(0.1)
    raise AssertionError(f"{needle!r} not on screen after {timeout} s:\n{shown}")


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_console_menu_in_tmux_saves_what_the_flags_save(project, tmp_path_factory):
    """Drive attach_data_sources in a real terminal with the original's keystrokes."""
    socket = f"unetsl-test-{uuid.uuid4().hex[:8]}"
    done = project / "exit-code"
    command = (f"{shlex.quote(script('attach_data_sources'))} -c m.json; "
               f"echo $? > {shlex.quote(str(done))}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TMUX")}
    env.setdefault("TERM", "xterm-256color")  # CI runners may have no TERM
    subprocess.run(["tmux", "-L", socket, "-f", "/dev/null", "new-session", "-d", "-s", "attach",
                    "-x", "120", "-y", "40", "-c", str(project), command],
                   check=True, timeout=10, env=env)
    try:
        _wait_screen(socket, "<anything else>. stop", timeout=60)
        _tmux("send-keys", "-t", "attach", "1", "Enter", socket=socket)
        _wait_screen(socket, "enter images directory:", timeout=10)
        _tmux("send-keys", "-t", "attach", "ima", "Tab", socket=socket)  # tab completion
        _wait_screen(socket, "enter images directory: images/", timeout=10)
        for keys in (["Enter"], ["labels", "Enter"], ["Enter"], ["1", "Enter"], ["Enter"]):
            _tmux("send-keys", "-t", "attach", *keys, socket=socket)
            time.sleep(0.2)
        shown = _wait_screen(socket, "save y/[n]?", timeout=10)
        assert "select labeller: 1" in shown and "added source 0" in shown
        _tmux("send-keys", "-t", "attach", "y", "Enter", socket=socket)
        deadline = time.monotonic() + 20
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert done.exists(), "attach_data_sources did not exit"
        assert done.read_text().strip() == "0"
    finally:
        _tmux("kill-server", socket=socket)
    menu_entry = saved_sources(project)
    assert menu_entry == [PAIRED_MULTICLASS]
    # the flags write the very same entry
    other = tmp_path_factory.mktemp("flags")
    for sub in ("images", "labels"):
        shutil.copytree(project / sub, other / sub)
    Config(path=other / "m.json").save()
    result = attach(other, "--paired", "images", "labels", "--labeller", "multiclass")
    assert result.returncode == 0, result.stderr
    assert saved_sources(other) == menu_entry


# --- the flags --------------------------------------------------------------------------------

class Ran:
    """A CliRunner result with the attributes of subprocess.CompletedProcess."""

    def __init__(self, result):
        self.returncode = result.exit_code
        self.stdout = result.stdout
        self.stderr = result.stderr


def attach(project, *args):
    """Run the command in-process (a subprocess would import TensorFlow each time)."""
    from click.testing import CliRunner

    from unetsl.cli.attach_data_sources import main

    cwd = os.getcwd()
    os.chdir(project)
    try:
        return Ran(CliRunner().invoke(main, ["-c", "m.json", *args]))
    finally:
        os.chdir(cwd)


def test_flags_add_list_and_remove(project):
    def run(*args):
        return attach(project, *args)

    result = run("--paired", "images", "labels", "--labeller", "1", "--angles", "0,45")
    assert result.returncode == 0, result.stderr
    assert "added source 0 (2 image pair(s))" in result.stdout
    result = run("--weighted", str(project / "images"), "labels", "weights", "--labeller",
                 "multiclass labels", "-S", 'sampling="foreground"')
    assert result.returncode == 0, result.stderr
    result = run("--files", "images/epi-000.tif", "labels-dist/epi-000.tif", "--labeller",
                 "linear")
    assert result.returncode == 0, result.stderr
    sources = saved_sources(project)
    assert sources[0] == dict(PAIRED_MULTICLASS, rotations=[0.0, 45.0])
    assert sources[1] == {"source type": "weighted directories", "input folders": ["images"],
                          "label folders": ["labels"], "weights folders": ["weights"],
                          "rotations": [], "rotation unit": "degrees",
                          "labeller": "multiclass labels", "sampling": "foreground"}
    assert sources[2] == {"source type": "paired files", "training images": ["images/epi-000.tif"],
                          "label images": ["labels-dist/epi-000.tif"], "rotations": [],
                          "rotation unit": "degrees", "labeller": "linear labels"}
    listed = run("--list")
    assert listed.returncode == 0
    assert listed.stdout.splitlines() == [f"{i}. {json.dumps(s)}" for i, s in enumerate(sources)]
    before = (project / "m.json").read_text()
    result = run("--remove", "2", "--remove", "0", "--remove", "2")
    assert result.returncode == 0, result.stderr
    assert saved_sources(project) == [sources[1]]
    assert (project / "m-json.bak").read_text() == before  # the old file is kept (issue 28)
    assert result.stdout.splitlines() == [f"removed 0. {json.dumps(sources[0])}",
                                          f"removed 2. {json.dumps(sources[2])}"]
    other_keys = json.loads((project / "m.json").read_text())
    assert other_keys["input shape"] == [1, 3, 64, 64]  # the rest of the config is kept


@pytest.mark.parametrize("args, needles", [
    (["--paired", "images", "nowhere", "--labeller", "1"], ["labels folder", "nowhere",
                                                            "does not exist"]),
    (["--paired", "images", "empty", "--labeller", "1"], ["empty", "holds no .tif"]),
    (["--paired", "images", "small", "--labeller", "1"], ["epi-000.tif", "small/epi-000.tif"]),
    (["--paired", "images", "labels"], ["--labeller is required"]),
    (["--paired", "images", "labels", "--labeller", "fuzzy"], ["unknown labeller 'fuzzy'"]),
    (["--paired", "images", "labels", "--labeller", "1", "--angles", "1,b"],
     ["cannot convert 'b'"]),
    (["--paired", "images", "labels", "--labeller", "1", "-S", "epochs=3"], ["-S 'epochs'"]),
    (["--paired", "images", "labels-dist", "--labeller", "multiclass"],  # issue 28 item 5
     ["labels-dist/epi-000.tif", "label value 9 needs 4 output channels", '"n labels"']),
    (["--remove", "4"], ["no data source 4"]),
    (["--labeller", "1"], ["--paired, --weighted or --files"]),
    ([], ["no terminal for the menu"]),
])
def test_bad_flags_are_one_line_errors(project, args, needles, assert_one_line_error):
    (project / "empty").mkdir()
    (project / "small").mkdir()
    tifffile.imwrite(project / "small" / "epi-000.tif", np.zeros((3, 16, 16), np.uint8),
                     imagej=True, metadata={"axes": "TYX"})
    before = (project / "m.json").read_text()
    result = attach(project, *args)
    assert_one_line_error(result, *needles)
    assert result.returncode == 2
    assert (project / "m.json").read_text() == before


def test_missing_config(tmp_path, assert_one_line_error):
    from click.testing import CliRunner

    from unetsl.cli.attach_data_sources import main

    result = Ran(CliRunner().invoke(main, ["-c", str(tmp_path / "nothing.json"), "--list"]))
    assert_one_line_error(result, "nothing.json", "create_model")
    assert not Path(tmp_path / "nothing.json").exists()


def test_arrays_in_memory_become_a_paired_source(tmp_path):
    from unetsl.data.attach import add_array_pair
    from unetsl.errors import UnetslError
    from unetsl.io.tiff import read_image

    image = np.arange(3 * 16 * 16, dtype=np.uint16).reshape(3, 1, 1, 16, 16)
    label = (image % 7 == 0).astype(np.uint8)
    entries: list[dict] = []
    entry, n_pairs = add_array_pair(entries, tmp_path, "my movie", image, label, "multiclass",
                                    spacing=(1.0, 0.2, 0.2), unit="micron")
    assert n_pairs == 1 and entries == [entry]
    assert entry["input folders"] == ["my-movie/images"]
    assert entry["label folders"] == ["my-movie/labels"]
    written = read_image(tmp_path / "my-movie" / "images" / "my-movie.tif")
    np.testing.assert_array_equal(written.data, image)
    assert written.spacing[1:] == pytest.approx((0.2, 0.2)) and written.unit == "micron"
    again, _ = add_array_pair(entries, tmp_path, "my movie", image, label, "multiclass")
    assert again == entry and len(entries) == 1  # rewritten, not added twice
    with pytest.raises(UnetslError,
                       match=r"other\.tif has \(t, c, z, y, x\) = \(3, 1, 1, 16, 16\)"):
        add_array_pair(entries, tmp_path, "other", image, label[:, :, :, :8], "multiclass")
    assert len(entries) == 1


def test_angles_are_stored_with_their_unit_and_never_noted_again(project, caplog):
    """unetsl writes "rotation unit", so its configs load silently; the original's configs
    (radians, no unit key) get their note once per run."""
    import logging

    from unetsl.data.sources import parse_sources

    dialogue = AttachDialogue([], project, cwd=project)
    answers(dialogue, "1", "images", "labels", "0.5 1.25", "1", "", "y")
    entry = dialogue.entries[0]
    assert entry["rotations"] == [0.5, 1.25] and entry["rotation unit"] == "degrees"
    cfg = Config.load(project / "m.json")
    original = {k: v for k, v in entry.items() if k != "rotation unit"}
    with caplog.at_level(logging.WARNING, logger="unetsl"):
        cfg["data sources"] = [entry]
        parse_sources(cfg)
        assert "rotation" not in caplog.text
        cfg["data sources"] = [original]
        parse_sources(cfg)
        parse_sources(cfg)
    assert caplog.text.count('add "rotation unit": "radians"') == 1
