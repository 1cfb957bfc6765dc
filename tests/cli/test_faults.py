"""Faults during work: a full disk and a kill while predict_image writes leave nothing under
the final name (and no temporary file), with one line saying what happened; with "seed" set,
create_model builds the same weights every time."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from unetsl.config.model_config import Config
from unetsl.io.tiff import write_image
from unetsl.nets.model_files import save_model
from unetsl.nets.unet import build_model


def _script(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A tiny 2D model and a 4-frame 256 x 256 image (its float probabilities: 2 MB)."""
    folder = tmp_path_factory.mktemp("faults")
    cfg = Config({"input shape": [1, 1, 32, 32], "depth": 2, "n filters": 2, "n labels": 2,
                  "pooling": [1, 2, 2], "spatial dropout rate": 0.0, "seed": 1},
                 path=folder / "m.json")
    save_model(build_model(cfg), folder / "m.h5")
    rng = np.random.default_rng(0)
    write_image(folder / "img.tif", rng.integers(0, 255, (4, 1, 1, 256, 256), dtype=np.uint8))
    return folder


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_full_disk_while_writing_is_one_line_and_leaves_nothing(work, assert_one_line_error):
    before = _files(work)

    def small_file_limit() -> None:  # as `ulimit -f 256`: writes past 256 kB fail (EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))

    result = subprocess.run([_script("predict_image"), "m.h5", "img.tif", "out.tif", "-b",
                             "--probabilities"], cwd=work, capture_output=True, text=True,
                            timeout=300, preexec_fn=small_file_limit)
    assert_one_line_error(result, "while writing", "no partial file")
    assert _files(work) == before  # no out.tif, no out-prob.tif, no temporary file


def test_sigterm_during_prediction_keeps_no_partial_output(work):
    before = _files(work)
    process = subprocess.Popen([_script("predict_image"), "m.h5", "img.tif", "term.tif", "-b",
                                "-D", "batch size=1", "--probabilities"], cwd=work,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(name.startswith(".term") for name in _files(work)):  # writing has begun
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "terminated" in err
    assert _files(work) == before


def test_seed_gives_the_same_initial_weights(tmp_path):
    def weights(seed):
        cfg = Config({"input shape": [1, 1, 16, 16], "depth": 2, "n filters": 2,
                      "pooling": [1, 2, 2], "seed": seed}, path=tmp_path / "s.json")
        return build_model(cfg).get_weights()

    first, again, other = weights(3), weights(3), weights(4)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))
