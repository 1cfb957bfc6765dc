"""The ``cerberus`` command group of the original: its five subcommands, chained on one
command line (create -> attach -> train, then predict every head), a new config from the
cerberus defaults, and one-line errors for configs that are not cerberus configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tifffile

from unetsl.config.cerberus_layout import CerberusConfig
from unetsl.config.heads import DEFAULT_HEADS
from unetsl.data import synthetic

SUBCOMMANDS = ["create", "attach", "inspect", "train", "predict"]
NAMES = [h["name"] for h in DEFAULT_HEADS]
TINY = ["-D", "input shape=[1,3,32,32]", "-D", "n filters=2"]


def test_help_lists_the_five_subcommands_in_order(run_script):
    result = run_script("cerberus", "--help")
    assert result.returncode == 0, result.stderr
    listed = result.stdout.split("Commands:")[1].split("Examples:")[0].split()
    assert [w for w in listed if w in SUBCOMMANDS] == SUBCOMMANDS
    predict = run_script("cerberus", "predict", "--help")
    assert predict.returncode == 0 and "MODEL_FILE IMAGE_FILE [OUTPUT_FILE]" in predict.stdout
    assert "--all-outputs" not in predict.stdout  # always every head


def test_default_config_is_the_originals():
    config = CerberusConfig.default("new.json")
    saved = json.loads(config.to_json())
    assert saved["unet"] == {"input shape": [1, 3, 64, 64], "kernel shape": [3, 3, 3],
                             "pooling": [1, 2, 2], "depth": 3, "n filters": 32,
                             "spatial dropout rate": 0.0625}
    assert saved["heads"] == DEFAULT_HEADS and saved["data sources"] == []
    assert config.model_path == Path("new.h5")


def test_chained_create_attach_train_then_predict(tmp_path: Path, run_script):
    from unetsl.nets.model_files import load_model

    synthetic.write_dataset(tmp_path, n_images=2, shape=(3, 48, 48), seed=3, distance=False,
                            cerberus=True)
    result = run_script("cerberus", "create", "-c", "x.json", "-b", *TINY,
                        "attach", "-c", "x.json", "--paired", "images", "labels-packed",
                        "--labeller", "linear",
                        "train", "-c", "x.json", "-b", "-D", "epochs=1",
                        "-D", "stride=[0,3,16,16]", "-D", "batch size=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "added source 0 (2 image pair(s))" in result.stdout
    assert "trained 1/1 epochs: x-latest.h5" in result.stdout
    saved = json.loads((tmp_path / "x.json").read_text())
    assert list(saved) == ["unet", "heads", "data sources", "training"]
    assert saved["unet"]["input shape"] == [1, 3, 32, 32] and saved["unet"]["n filters"] == 2
    assert saved["heads"] == DEFAULT_HEADS and saved["training"]["epochs"] == 2000
    snapshot = json.loads(next(tmp_path.glob("training-log_x-*.json")).read_text())
    assert snapshot["training"]["epochs"] == 1  # -D values are for the run only
    assert saved["data sources"][0]["label folders"] == ["labels-packed"]
    backup = json.loads((tmp_path / "x-json.bak").read_text())  # attach keeps what it changed
    assert backup["data sources"] == [] and backup["heads"] == DEFAULT_HEADS
    assert list(load_model(tmp_path / "x-best.h5").output_names) == NAMES

    # options after MODEL IMAGE, as in the original's usage line (not taken as OUTPUT)
    predicted = run_script("cerberus", "predict", "x-best.h5", "images/epi-000.tif", "-b",
                           cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    assert predicted.stdout.strip().endswith("finished cerberus prediction!")
    for name in NAMES:
        out = tmp_path / f"pred-x-best-epi-000-{name}.tif"
        assert out.is_file(), predicted.stdout
        assert tifffile.imread(out).shape == (3, 48, 48)
    assert not list(tmp_path.glob("-b*"))


@pytest.mark.parametrize(("text", "needle"), [
    ('{"n labels": 2}', "not a cerberus config"),
    ('{"unet": ', "malformed JSON"),
    ('{"unet": {}, "heads": [{"name": "d"}]}', "bad.json"),
])
def test_create_refuses_a_bad_config_in_one_line(tmp_path: Path, text: str, needle: str,
                                                 assert_one_line_error, run_script):
    (tmp_path / "bad.json").write_text(text)
    result = run_script("cerberus", "create", "-c", "bad.json", "-b",
                        "train", "-c", "bad.json", "-b", cwd=tmp_path)
    assert_one_line_error(result, "bad.json", needle)
    assert "info: training" not in result.stderr  # the chain stops at the error
    assert (tmp_path / "bad.json").read_text() == text
    assert not (tmp_path / "bad.h5").exists()


def test_create_in_a_missing_folder_fails_in_one_line(tmp_path: Path, assert_one_line_error,
                                                      run_script):
    result = run_script("cerberus", "create", "-c", "nodir/x.json", "-b", cwd=tmp_path)
    assert_one_line_error(result, "nodir")
