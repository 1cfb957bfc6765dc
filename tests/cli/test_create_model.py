"""create_model end to end through its console script, as a user runs it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest


def script(name: str) -> str:
    """The console script of the running interpreter's environment."""
    return str(Path(sys.executable).parent / name)


TINY = ["-D", "n filters=2", "-D", "depth=2", "-D", "input shape=[1,3,16,16]"]


def test_batch_mode_writes_json_and_model(tmp_path, run_script):
    result = run_script("create_model", "-c", "m.json", "-b", *TINY, "-D", "n labels=2",
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["n labels"] == 2 and saved["input shape"] == [1, 3, 16, 16]  # -D saved
    assert (tmp_path / "m.h5").stat().st_size > 0
    assert "parameters:" in result.stdout and "output" in result.stdout
    assert "Traceback" not in result.stderr and "oneDNN" not in result.stderr

    from unetsl.nets.model_files import load_model
    from unetsl.nets.shapes import model_patch_shape

    model = load_model(tmp_path / "m.h5")
    assert model_patch_shape(model) == (1, 3, 16, 16)
    assert model.outputs[0].shape[-1] == 2


def test_existing_config_is_kept_and_backed_up(tmp_path, run_script):
    (tmp_path / "m.json").write_text(json.dumps({"n filters": 2, "depth": 2,
                                                 "input shape": [1, 1, 16, 16],
                                                 "activation": "softmax", "n labels": 3}))
    before = (tmp_path / "m.json").read_text()
    result = run_script("create_model", "-c", "m.json", "-b", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m-json.bak").read_text() == before
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["activation"] == "softmax" and saved["depth"] == 2
    assert "epochs" in saved  # defaults filled in


def test_model_file_key_and_keras_format(tmp_path, run_script):
    (tmp_path / "m.json").write_text(json.dumps({"model file": "nets/m.keras"}))
    (tmp_path / "nets").mkdir()
    result = run_script("create_model", "-c", "m.json", "-b", *TINY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "nets" / "m.keras").exists() and not (tmp_path / "m.h5").exists()


def test_reload_in_new_process_predicts_identically(tmp_path, run_script):
    assert run_script("create_model", "-c", "m.json", "-b", *TINY, cwd=tmp_path).returncode == 0
    code = (
        "import sys, numpy as np\n"
        "from unetsl.nets import load_model\nfrom unetsl.nets.shapes import to_model_layout\n"
        "m = load_model(sys.argv[1])\n"
        "x = np.random.default_rng(0).normal(size=(2, 1, 3, 16, 16)).astype('float32')\n"
        "np.save(sys.argv[2], m.predict(to_model_layout(x), verbose=0))\n"
    )
    for name in ("a.npy", "b.npy"):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.h5"),
                        str(tmp_path / name)], check=True, capture_output=True)
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))


@pytest.mark.parametrize("content, args, needles", [
    ('{"depth": 3,,}', [], ["m.json", "malformed JSON"]),
    ('{"input shape": [1, 64, 64]}', [], ['"input shape"', "4 integers"]),
    ("{}", ["-D", "depth=8"], ['"input shape"', '"depth"', "divisible"]),
    ("{}", ["-D", "activation=softmax"], ['"activation"', "could not parse"]),
    ("{}", ["-D", "activation=\"nonsense\""], ['"activation"']),
    ("[1, 2]", [], ["m.json", "JSON object"]),
])
def test_bad_input_gives_one_line(tmp_path, content, args, needles, assert_one_line_error,
                                  run_script):
    (tmp_path / "m.json").write_text(content)
    result = run_script("create_model", "-c", "m.json", "-b", *args, cwd=tmp_path)
    assert_one_line_error(result, *needles)
    assert not (tmp_path / "m.h5").exists()
    assert (tmp_path / "m.json").read_text() == content  # nothing overwritten


def test_missing_folder(tmp_path, assert_one_line_error, run_script):
    result = run_script("create_model", "-c", str(tmp_path / "no" / "m.json"), "-b")
    assert_one_line_error(result, "does not exist")


def _tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, timeout=20).stdout


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_editor_in_a_terminal(tmp_path):
    """Open the urwid editor in tmux, change depth, finish with tab + enter."""
    session = f"unetsl-test-{time.time_ns()}"
    cmd = f"{script('create_model')} -c m.json " + " ".join(
        f"'{a}'" for a in TINY) + "; echo EXIT=$? > done.txt"
    _tmux("new-session", "-d", "-s", session, "-x", "120", "-y", "50", "-c", str(tmp_path), cmd)
    try:
        deadline = time.time() + 60
        while "Update config" not in _tmux("capture-pane", "-p", "-t", session):
            assert time.time() < deadline, "editor did not appear"
            time.sleep(0.3)
        # focus starts on "input shape"; move to "depth" (5th row) and replace its value
        for _ in range(4):
            _tmux("send-keys", "-t", session, "Down")
        _tmux("send-keys", "-t", session, "End")
        _tmux("send-keys", "-t", session, "BSpace")
        _tmux("send-keys", "-t", session, "-l", "1")
        time.sleep(0.3)
        _tmux("send-keys", "-t", session, "Tab")
        _tmux("send-keys", "-t", session, "Enter")
        deadline = time.time() + 60
        while not (tmp_path / "done.txt").exists():
            assert time.time() < deadline, _tmux("capture-pane", "-p", "-t", session)
            time.sleep(0.3)
    finally:
        _tmux("kill-session", "-t", session)
    assert (tmp_path / "done.txt").read_text().strip() == "EXIT=0"
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["depth"] == 1 and saved["n filters"] == 2
    assert (tmp_path / "m.h5").exists()
