"""The cerberus example: bit-packed labels (synthetic.pack_cerberus_labels), the
labels-packed/ folders of ``make_example_data.py --cerberus``, and examples/cerberus.json
loading and training with the README's commands (attach_data_sources, train_model)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from unetsl.config.cerberus_layout import CerberusTraining
from unetsl.config.heads import DEFAULT_HEADS
from unetsl.config.model_config import Config
from unetsl.data import synthetic
from unetsl.errors import UnetslError

REPO = Path(__file__).resolve().parents[2]

EXAMPLE = REPO / "examples" / "cerberus.json"
MAKE_DATA = REPO / "examples" / "make_example_data.py"
SHAPE = (3, 48, 48)  # (t, y, x) of the tiny example images
TARGETS = ("labels", "labels-dist", "labels-packed")


@pytest.fixture(scope="module")
def example_data(tmp_path_factory) -> Path:
    """``make_example_data.py OUT --cerberus --held-out`` on two tiny time series."""
    out = tmp_path_factory.mktemp("cerberus-data")
    cmd = [sys.executable, str(MAKE_DATA), str(out), "--n", "2", "--seed", "3",
           "--shape", *map(str, SHAPE), "--cerberus", "--held-out"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "labels-packed: 2 file(s)" in result.stdout
    return out


# --------------------------------------------------------------------------- packing


def test_pack_gives_the_label_bit_contract():
    labels = np.array([[1, 3, 0, 1, 0]], dtype=np.uint8)
    distance = np.array([[5, 0, 63, 64, 255]], dtype=np.uint8)
    packed = synthetic.pack_cerberus_labels(labels, distance)
    assert packed.dtype == np.uint8
    # label 1 at distance 5 is 21 (0001 0101): membrane for the membrane heads, 5 for distance
    assert packed.tolist() == [[21, 3, 63 << 2, (63 << 2) | 1, 252]]


def test_pack_rounds_and_clips_real_distances():
    labels = np.zeros(5, dtype=np.uint8)
    distance = np.array([4.4, 4.6, -1.0, 62.6, 1e6])  # edt gives float64
    packed = synthetic.pack_cerberus_labels(labels, distance)
    assert packed.dtype == np.uint8
    assert (packed >> 2).tolist() == [4, 5, 0, 63, 63]


def test_pack_of_a_sample_splits_back_into_labels_and_distance():
    sample = synthetic.make_sample("2d", (2, 48, 48), seed=1)
    packed = synthetic.pack_cerberus_labels(sample.labels, sample.distance)
    assert packed.shape == sample.labels.shape and packed.dtype == np.uint8
    assert np.array_equal(packed & 3, sample.labels)
    assert np.array_equal(packed >> 2, np.minimum(sample.distance, 63))


@pytest.mark.parametrize(("labels", "distance", "needle"), [
    (np.array([4]), np.array([0]), "0..3"),
    (np.array([-1]), np.array([0]), "0..3"),
    (np.array([1.0]), np.array([0]), "integers"),
    (np.array([1, 1]), np.array([0]), "same shape"),
])
def test_pack_refuses_what_does_not_fit_two_bits(labels, distance, needle):
    with pytest.raises(UnetslError, match=needle):
        synthetic.pack_cerberus_labels(labels, distance)


# --------------------------------------------------------------------------- data folders


def test_cerberus_flag_writes_paired_labels_packed(example_data: Path):
    names = ["epi-000.tif", "epi-001.tif"]
    for sub in ("images", *TARGETS):
        assert sorted(p.name for p in (example_data / sub).iterdir()) == names, sub
    held = example_data / "held-out"
    for sub in TARGETS:
        assert (held / sub / "epi-holdout.tif").is_file(), sub
    for folder, name in [(example_data, names[1]), (held, "epi-holdout.tif")]:
        with tifffile.TiffFile(folder / "labels-packed" / name) as tif:
            assert tif.is_imagej and tif.series[0].axes == "TYX"
            packed = tif.asarray()
        labels = tifffile.imread(folder / "labels" / name)
        distance = tifffile.imread(folder / "labels-dist" / name)
        assert packed.dtype == np.uint8 and packed.shape == SHAPE
        assert np.array_equal(packed, synthetic.pack_cerberus_labels(labels, distance))
        assert (packed >> 2).max() > 0 and (packed & 3).max() == 3


def test_write_dataset_cerberus_option(tmp_path: Path):
    written = synthetic.write_dataset(tmp_path, n_images=1, shape=(2, 32, 32), seed=4,
                                      distance=False, cerberus=True)
    assert set(written) == {"images", "labels", "labels-packed"}
    sample = synthetic.make_sample("2d", (2, 32, 32), seed=4)
    packed = tifffile.imread(written["labels-packed"][0])
    assert np.array_equal(packed, synthetic.pack_cerberus_labels(sample.labels,
                                                                 sample.distance))
    plain = synthetic.write_dataset(tmp_path / "plain", n_images=1, shape=(2, 32, 32))
    assert "labels-packed" not in plain and not (tmp_path / "plain" / "labels-packed").exists()


# --------------------------------------------------------------------------- the config


def test_example_config_loads_as_cerberus_training():
    config = Config.load(EXAMPLE)
    assert isinstance(config, CerberusTraining) and config.had_training
    raw = json.loads(EXAMPLE.read_text())
    assert list(raw) == ["unet", "heads", "data sources", "training"]
    assert raw["heads"] == DEFAULT_HEADS and raw["data sources"] == []
    assert config.head_names == ["distance", "membrane-scale", "membrane-crop"]
    assert config["input shape"] == [1, 3, 64, 64] and config["n filters"] <= 16
    assert config["loss function"]["distance"] == "unetsl.model.logMse"
    # Dice alone collapses on the sparse membranes and training says so (issue 28 item 7)
    assert config["loss function"]["membrane-scale"] == "unetsl.channelDiceBceLoss"
    assert config["loss function"]["membrane-crop"] == "unetsl.channelDiceBceLoss"
    assert config["normalize samples"] is True
    config.validate()


def test_example_trains_with_the_readme_commands(example_data: Path, tmp_path: Path, run_script):
    from unetsl.nets.model_files import load_model
    from unetsl.training.logs import read_log

    for sub in ("images", "labels-packed"):
        shutil.copytree(example_data / sub, tmp_path / sub)
    shutil.copy(EXAMPLE, tmp_path / "cerberus.json")
    attached = run_script("attach_data_sources", "-c", "cerberus.json", "--paired", "images",
                          "labels-packed", "--labeller", "linear", "-b", cwd=tmp_path)
    assert attached.returncode == 0, attached.stderr
    result = run_script("train_model", "-c", "cerberus.json", "-b",
                        "-D", "input shape=[1,3,32,32]", "-D", "n filters=2", "-D", "epochs=3",
                        "-D", "stride=[0,3,16,16]", "-D", "batch size=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert '"loss function"' not in result.stderr  # no advice to use what it uses
    model = load_model(tmp_path / "cerberus-best.h5")
    assert list(model.output_names) == ["distance", "membrane-scale", "membrane-crop"]
    assert [tuple(o.shape[1:]) for o in model.outputs] == [
        (3, 32, 32, 1), (3, 16, 16, 2), (3, 32, 32, 2)]
    keys, rows = read_log(next(tmp_path.glob("training-log_cerberus-*.txt")))
    for head in ("distance", "membrane-scale", "membrane-crop"):
        assert f"{head}_loss" in keys and f"val_{head}_loss" in keys
    assert len(rows) == 3 and all(math.isfinite(v) for row in rows for v in row)
    saved = json.loads((tmp_path / "cerberus.json").read_text())
    assert saved["heads"] == DEFAULT_HEADS
    snapshot = json.loads(next(tmp_path.glob("training-log_cerberus-*.json")).read_text())
    assert snapshot["training"]["epochs"] == 3 and snapshot["training"]["batch size"] == 2
    assert saved["training"]["epochs"] == 40  # as in the example file: -D was for the run only
    assert saved["data sources"][0]["label folders"] == ["labels-packed"]
