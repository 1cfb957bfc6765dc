"""export_model --bioimageio: packages that the official bioimage.io validator accepts."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from unetsl.config.model_config import config_for_model
from unetsl.errors import UnetslError
from unetsl.export.bioimageio import export_bioimageio
from unetsl.export.validation import validate_package
from unetsl.nets.model_files import load_model, save_model
from unetsl.nets.unet import build_unet

pytest.importorskip("bioimageio.spec", reason="bioimageio.spec is not installed "
                    "(pip install 'unetsl[bioimageio]')")


def _spec_status(path: Path) -> tuple[str, list[str]]:
    """The official validator, with file checks (hashes, test tensors, documentation)."""
    from bioimageio.spec import load_description

    summary = load_description(path, perform_io_checks=True).validation_summary
    errors = [f"{'.'.join(map(str, e.loc))}: {e.msg}" for d in summary.details for e in d.errors]
    return str(summary.status), errors


@pytest.fixture(scope="module")
def trained_2d_package(tmp_path_factory) -> tuple[Path, dict]:
    compat = Path(__file__).resolve().parents[3] / "shared" / "compat"  # as conftest's
    if not compat.is_dir():
        pytest.skip(f"reference files of the original not found at {compat}")
    out = tmp_path_factory.mktemp("export") / "trained-2d.zip"
    result = export_bioimageio(compat / "trained-2d-best.h5", out,
                               sample=compat / "sample-2d.tif", authors=["Jane Doe"])
    return out, result.rdf


def test_original_model_exports_and_validates(trained_2d_package) -> None:
    path, rdf = trained_2d_package
    status, errors = _spec_status(path)
    assert status in ("valid-format", "passed"), errors
    names = set(zipfile.ZipFile(path).namelist())
    assert {"rdf.yaml", "README.md", "cover.png", "test_input.npy", "test_output.npy",
            "weights.keras", "weights.h5", "tf-saved-model.zip"} <= names
    assert rdf["type"] == "model" and rdf["format_version"].startswith("0.5")
    assert set(rdf["weights"]) == {"keras_v3", "keras_hdf5", "tensorflow_saved_model_bundle"}
    assert rdf["weights"]["keras_hdf5"]["parent"] == "keras_v3"
    assert any(c["doi"] == "10.1007/978-3-319-24574-4_28" for c in rdf["cite"])  # U-Net paper
    # The sample is a 2D time series: the model's z axis holds its frames.
    axes = rdf["inputs"][0]["axes"]
    assert [a["type"] for a in axes] == ["batch", "time", "space", "space", "channel"]
    assert [a.get("size") for a in axes[1:4]] == [3, 64, 64]
    assert rdf["outputs"][0]["axes"][-1]["channel_names"] == ["bit0", "bit1"]
    readme = zipfile.ZipFile(path).read("README.md").decode()
    assert "## Validation" in readme and "ActiveUnetSegmentation" in readme


def test_test_output_is_the_models_prediction(compat: Path, trained_2d_package) -> None:
    path, _ = trained_2d_package
    with zipfile.ZipFile(path) as zf:
        raw = np.load(zf.open("test_input.npy"))
        expected = np.load(zf.open("test_output.npy"))
        weights = zf.read("weights.keras")
    assert raw.shape == (1, 3, 64, 64, 1) and raw.dtype == np.float32
    assert expected.shape == (1, 3, 64, 64, 2)
    sample = tifffile.imread(compat / "sample-2d.tif")  # 3 frames of 200 x 200
    np.testing.assert_array_equal(raw[0, :, :, :, 0], sample[:, 68:132, 68:132])  # the centre
    model = load_model(compat / "trained-2d-best.h5")
    np.testing.assert_allclose(model.predict_on_batch(raw), expected, atol=1e-5)
    exported = path.parent / "exported.keras"
    exported.write_bytes(weights)
    import keras

    plain = keras.saving.load_model(exported, compile=False)  # no unetsl objects needed
    np.testing.assert_allclose(plain.predict_on_batch(raw), expected, atol=1e-5)


def test_preprocessing_from_the_config(tmp_path: Path) -> None:
    model = build_unet((1, 4, 16, 16), n_labels=3, depth=2, n_filters=2, activation="softmax",
                       pooling=(2, 2, 2))
    save_model(model, tmp_path / "net-best.h5")
    (tmp_path / "net.json").write_text(json.dumps({
        "input shape": [1, 4, 16, 16], "pooling": [2, 2, 2], "n labels": 3,
        "normalize samples": True, "normalization percentiles": [1, 99.8]}))
    assert config_for_model(tmp_path / "net-best.h5") == tmp_path / "net.json"
    out = tmp_path / "net.zip"
    result = export_bioimageio(tmp_path / "net-best.h5", out, weight_formats=["keras_v3"],
                               description="Three classes.", tags=["Test"])
    steps = result.rdf["inputs"][0]["preprocessing"]
    # bioimageio.spec ends the steps with a cast to the input's dtype (a no-op here)
    assert [s["id"] for s in steps] == ["ensure_dtype", "scale_range", "zero_mean_unit_variance",
                                        "ensure_dtype"]
    assert steps[1]["kwargs"]["max_percentile"] == 99.8
    assert steps[2]["kwargs"] == {"axes": ["z", "y", "x"], "eps": 1e-6}
    assert result.rdf["outputs"][0]["axes"][-1]["channel_names"] == ["class0", "class1",
                                                                     "background"]
    assert [a["type"] for a in result.rdf["inputs"][0]["axes"]][1] == "space"
    assert "test" in result.rdf["tags"]
    status, errors = _spec_status(out)
    assert status in ("valid-format", "passed"), errors
    with zipfile.ZipFile(out) as zf:
        raw = np.load(zf.open("test_input.npy"))
        expected = np.load(zf.open("test_output.npy"))
    lo, hi = np.percentile(raw, [1, 99.8], axis=(1, 2, 3), keepdims=True)
    x = (raw - lo) / (hi - lo + 1e-6)
    x = (x - x.mean(axis=(1, 2, 3), keepdims=True)) / (x.std(axis=(1, 2, 3), keepdims=True) + 1e-6)
    np.testing.assert_allclose(model.predict_on_batch(x.astype(np.float32)), expected, atol=1e-5)


def test_bad_license_stops_before_the_model_is_loaded(tiny_model: Path, tmp_path: Path,
                                                     monkeypatch) -> None:
    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded before the license was checked")

    monkeypatch.setattr("unetsl.nets.model_files.load_model", loaded)
    with pytest.raises(UnetslError, match="license 'not-a-licence' is not an SPDX"):
        export_bioimageio(tiny_model, tmp_path / "out.zip", license="not-a-licence")
    assert not (tmp_path / "out.zip").exists()


def test_a_crash_while_packaging_leaves_no_zip(tiny_model: Path, tmp_path: Path,
                                               monkeypatch) -> None:
    import bioimageio.spec

    save = bioimageio.spec.save_bioimageio_package

    def crash(descr, *, output_path, **kwargs):
        save(descr, output_path=output_path, **kwargs)  # the whole zip, then a crash
        raise KeyboardInterrupt

    monkeypatch.setattr(bioimageio.spec, "save_bioimageio_package", crash)
    with pytest.raises(KeyboardInterrupt):
        export_bioimageio(tiny_model, tmp_path / "out.zip", weight_formats=["keras_v3"])
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(bioimageio.spec, "save_bioimageio_package", save)
    result = export_bioimageio(tiny_model, tmp_path / "out.zip", weight_formats=["keras_v3"])
    assert sorted(zipfile.ZipFile(result.path).namelist()) == result.files == [
        "README.md", "cover.png", "rdf.yaml", "sample_input.tif", "sample_output.tif",
        "test_input.npy", "test_output.npy", "weights.keras"]


def test_three_headed_cerberus_exports_every_head(compat: Path, tmp_path: Path) -> None:
    out = tmp_path / "cerberus.zip"
    result = export_bioimageio(compat / "cerberus.h5", out,
                               weight_formats=["keras_v3", "keras_hdf5"])
    outputs = result.rdf["outputs"]
    assert [o["id"] for o in outputs] == ["distance", "membrane_crop", "membrane_scale"]
    scale = outputs[2]["axes"]
    assert [a["size"] for a in scale[1:4]] == [3, 32, 32]
    assert scale[2]["scale"] == 2.0  # half resolution in y and x
    status, errors = _spec_status(out)
    assert status in ("valid-format", "passed"), errors
    with zipfile.ZipFile(out) as zf:
        exported = tmp_path / "w.keras"
        exported.write_bytes(zf.read("weights.keras"))
        raw = np.load(zf.open("test_input.npy"))
        expected = [np.load(zf.open(o["test_tensor"]["source"])) for o in outputs]
    import keras

    plain = keras.saving.load_model(exported, compile=False)
    for got, want in zip(plain.predict_on_batch(raw), expected):  # same order as the rdf
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_bioimageio_core_runs_the_package(trained_2d_package) -> None:
    pytest.importorskip("bioimageio.core", reason="bioimageio.core is not installed")
    status, tool, messages = validate_package(trained_2d_package[0])
    assert tool == "bioimageio.core test"
    assert status == "passed", messages


def test_cli(compat: Path, tmp_path: Path, assert_one_line_error, run_script) -> None:
    result = run_script("export_model", str(compat / "unet3d.h5"), "unet3d.zip", "--bioimageio",
                        "--author", "Jane Doe", "--weights", "keras_v3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "bioimage.io validation (" in result.stdout
    assert "failed" not in result.stdout
    rdf = yaml.safe_load(zipfile.ZipFile(tmp_path / "unet3d.zip").read("rdf.yaml"))
    assert rdf["authors"] == [{"name": "Jane Doe"}]
    assert [a["id"] for a in rdf["inputs"][0]["axes"][1:4]] == ["z", "y", "x"]

    result = run_script("export_model", str(compat / "unet3d.h5"), "x.zip", cwd=tmp_path)
    assert_one_line_error(result, "--bioimageio")
    result = run_script("export_model", str(compat / "unet3d.h5"), "x.tar", "--bioimageio",
                        cwd=tmp_path)
    assert_one_line_error(result, "x.tar")
    result = run_script("export_model", str(compat / "unet3d.h5"), "x.zip", "--bioimageio",
                        "--weights", "onnx", cwd=tmp_path)
    assert_one_line_error(result, "onnx")


def test_only_real_warnings_become_warning_lines() -> None:
    """bioimageio.core (0.11) reports "all elements agree" as a warning entry of severity INFO
    (20); the command printed it as three `warning:` lines (issue 28 item 7)."""
    from types import SimpleNamespace as Entry

    from unetsl.export.validation import summary_lines

    detail = Entry(errors=[], warnings=[
        Entry(loc=("weights", "keras_hdf5"), severity=20,
              msg="Output `output0`: all elements agree with expected values."),
        Entry(loc=("weights", "keras_hdf5"), severity=30,
              msg="Output `output0`: 3 of 4096 elements disagree with expected values."),
        Entry(loc=(), msg="a spec warning without a severity")])
    lines = summary_lines(Entry(details=[detail]), "m.zip")
    assert lines == [
        "warning: m.zip/rdf.yaml weights.keras_hdf5: Output `output0`: 3 of 4096 elements "
        "disagree with expected values.",
        "warning: m.zip/rdf.yaml: a spec warning without a severity"]
