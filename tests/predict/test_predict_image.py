"""predict_image end to end: files, names, settings, errors, lazy I/O, multi-device path."""

from __future__ import annotations

import io as stdio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile

from unetsl.io.lazy import OutputTiff, open_image
from unetsl.io.tiff import read_image, write_image, write_like
from unetsl.predict.engine import predict, predict_outputs
from unetsl.predict.reduce import reduce

REPO = Path(__file__).resolve().parents[2]


class Ran:
    """A CliRunner result with the attributes of subprocess.CompletedProcess."""

    def __init__(self, result):
        self.returncode = result.exit_code
        self.stdout = result.stdout
        self.stderr = result.stderr
        self.exception = result.exception


def cli(folder: Path, *args: str, env: dict | None = None) -> Ran:
    """predict_image in-process (a subprocess would import TensorFlow each time)."""
    from click.testing import CliRunner

    from unetsl.cli.predict_image import main

    cwd = os.getcwd()
    os.chdir(folder)
    try:
        return Ran(CliRunner().invoke(main, list(args), env=env))
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """Tiny models (2D time series, 3D, cascade) and images with a pixel size."""
    import keras

    from unetsl.data.synthetic import epithelium_stack, epithelium_time_series, write_imagej
    from unetsl.nets.model_files import save_model
    from unetsl.nets.unet import build_cascade, build_unet

    folder = tmp_path_factory.mktemp("predict")
    keras.utils.set_random_seed(0)
    tiny = dict(depth=2, n_filters=2, spatial_dropout_rate=0.0)
    save_model(build_unet((1, 3, 32, 32), n_labels=2, **tiny), folder / "m2d.h5")
    save_model(build_unet((1, 8, 32, 32), n_labels=3, pooling=(2, 2, 2), activation="softmax",
                          **tiny), folder / "m3d.keras")
    save_model(build_cascade((1, 1, 32, 32), 2, n_labels=2, **tiny), folder / "casc.keras")
    write_imagej(folder / "ts.tif", epithelium_time_series((5, 70, 90), seed=1).image, "2d")
    write_imagej(folder / "stack.tif", epithelium_stack((20, 60, 70), seed=2).image, "3d")
    two = np.random.default_rng(0).integers(0, 200, (1, 2, 1, 40, 40)).astype(np.uint16)
    write_image(folder / "two-channels.tif", two)
    return folder


def _model(path):
    from unetsl.nets.model_files import load_model

    return load_model(path)


# ---------------------------------------------------------------------------- the command


def test_time_series_default_name_axes_scale_and_probabilities(work, run_script):
    result = run_script("predict_image", "m2d.h5", "ts.tif", "-b", "--probabilities", cwd=work)
    assert result.returncode == 0, result.stderr
    assert "wrote pred-m2d-ts.tif" in result.stdout and "wrote pred-m2d-ts-prob.tif" in \
        result.stdout
    # no terminal: one line per finished time point, the movie's 5 frames (read as depth)
    assert "time points 1-2/5: " in result.stderr and "-5/5: " in result.stderr
    assert "1/1" not in result.stderr
    with tifffile.TiffFile(work / "pred-m2d-ts.tif") as tif:
        assert tif.series[0].axes == "TYX" and tif.series[0].shape == (5, 70, 90)
        assert tif.imagej_metadata["frames"] == 5 and tif.series[0].dtype == np.uint8
    labels, source = read_image(work / "pred-m2d-ts.tif"), read_image(work / "ts.tif")
    assert labels.spacing == pytest.approx(source.spacing) and labels.unit == source.unit
    probs = read_image(work / "pred-m2d-ts-prob.tif")
    assert probs.data.shape == (5, 2, 1, 70, 90) and probs.data.dtype == np.float32
    np.testing.assert_array_equal(labels.data, reduce(probs.data, "multiclass"))
    # the same as the Python API on the same data
    model = _model(work / "m2d.h5")
    data = read_image(work / "ts.tif", depth_wanted=3).data
    api = predict(model, data)
    np.testing.assert_allclose(probs.data, np.swapaxes(api, 0, 2), atol=1e-6)


def test_stack_categorical_output_and_settings(work):
    result = cli(work, "m3d.keras", "stack.tif", "out3d.tif", "-b", "-D", "batch size=3",
                 "-D", "overlap=[2, 8, 8]")
    assert result.returncode == 0, result.stderr
    out = read_image(work / "out3d.tif")
    source = read_image(work / "stack.tif")
    assert out.data.shape == (1, 1, 20, 60, 70) and out.data.dtype == np.uint8
    assert out.spacing == pytest.approx(source.spacing)
    with tifffile.TiffFile(work / "out3d.tif") as tif:
        assert tif.series[0].axes == "ZYX"
    model = _model(work / "m3d.keras")
    expected = reduce(predict(model, source.data, overlap=(2, 8, 8), batch_size=3),
                      "categorical")
    np.testing.assert_array_equal(out.data, expected)
    assert set(np.unique(out.data)) <= {0, 1, 2}  # 2^k, background (last channel) 0


def test_reduction_override_linear_writes_float32_channels(work):
    result = cli(work, "m2d.h5", "ts.tif", "lin.tif", "-b", "-D", "reduction type=2")
    assert result.returncode == 0, result.stderr
    out = read_image(work / "lin.tif")
    assert out.data.dtype == np.float32 and out.data.shape == (5, 2, 1, 70, 90)


def test_cascade_all_outputs_one_file_each_and_output_index(work, assert_one_line_error):
    result = cli(work, "casc.keras", "ts.tif", "-b", "-m")
    assert result.returncode == 0, result.stderr
    names = ["pred-casc-ts-cascade_0.tif", "pred-casc-ts-cascade_1.tif"]
    assert all(f"wrote {n}" in result.stdout for n in names)
    result = cli(work, "casc.keras", "ts.tif", "first.tif", "-b", "-D", "output index=0")
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(read_image(work / "first.tif").data,
                                  read_image(work / names[0]).data)
    model = _model(work / "casc.keras")
    data = read_image(work / "ts.tif").data
    last = reduce(predict_outputs(model, data)[1], "multiclass")
    np.testing.assert_array_equal(read_image(work / names[1]).data, last)
    # a reduction per output, by output name
    result = cli(work, "casc.keras", "ts.tif", "per.tif", "-b", "-m", "-D",
                 'reduction type={"cascade_0": 2}')
    assert result.returncode == 0, result.stderr
    assert read_image(work / "per-cascade_0.tif").data.dtype == np.float32
    assert read_image(work / "per-cascade_1.tif").data.dtype == np.uint8
    result = cli(work, "casc.keras", "ts.tif", "-b", "-D", 'reduction type={"head": 2}')
    assert_one_line_error(result, "reduction type", "head")


def test_editor_without_b(work, monkeypatch):
    import unetsl.cli.predict_image as command

    seen = {}

    def fake_edit(values, title, validate):
        seen.update(values)
        validate({**values, "batch size": 5})
        return {**values, "batch size": 5, "output image": "edited.tif"}

    monkeypatch.setattr(command, "interactive", lambda batch: not batch)
    monkeypatch.setattr(command, "edit_values", fake_edit)
    result = cli(work, "m2d.h5", "ts.tif")
    assert result.returncode == 0, result.stderr
    assert seen["batch size"] == 16 and seen["output index"] == -1
    assert seen["output image"] == "pred-m2d-ts.tif" and seen["reduction type"] is None
    assert (work / "edited.tif").exists()
    monkeypatch.setattr(command, "edit_values", lambda values, title, validate: None)
    result = cli(work, "m2d.h5", "ts.tif", "cancelled.tif")
    assert result.returncode == 0 and "cancelling" in result.stdout
    assert not (work / "cancelled.tif").exists()


def test_gpus_from_environment_on_a_cpu_machine(work):
    result = cli(work, "m2d.h5", "ts.tif", "gpus.tif", "-b", env={"GPUS": "2"})
    assert result.returncode == 0, result.stderr
    assert (work / "gpus.tif").exists()


@pytest.mark.parametrize("args, needles", [
    (["missing.h5", "ts.tif"], ["missing.h5"]),
    (["m2d.h5", "missing.tif"], ["missing.tif"]),
    (["m2d.h5", "ts.tif", "-D", "batch size=ten"], ['"batch size"', "ten"]),
    (["m2d.h5", "ts.tif", "-D", "batch size=0"], ['"batch size"']),
    (["m2d.h5", "ts.tif", "-D", "bach size=3"], ['"bach size"']),
    (["m2d.h5", "ts.tif", "-D", "overlap=[1, 2]"], ['"overlap"']),
    (["m2d.h5", "ts.tif", "-D", "output index=3"], ['"output index"', "1 output"]),
    (["m2d.h5", "ts.tif", "-D", "tile shape=[3, 31, 32]"], ['"tile shape"', "[1, 2, 2]"]),
    (["m2d.h5", "ts.tif", "-D", "tile shape=[0, 32, 32]"], ['"tile shape"']),
    (["casc.keras", "ts.tif", "-D", "tile shape=[2, 32, 32]"], ['"tile shape"', "Reshape"]),
    (["m2d.h5", "two-channels.tif"], ["two-channels.tif", "2 channel"]),
    (["m2d.h5", "m3d.keras"], ["m3d.keras"]),
    (["m2d.h5", "ts.tif", "ts.tif/out.tif"], ["ts.tif/out.tif", "is a file"]),
])
def test_bad_input_is_one_line_error(work, args, needles, assert_one_line_error):
    result = cli(work, *args, "-b")
    assert result.returncode == 2, (result.stdout, result.stderr, result.exception)
    assert_one_line_error(result, *needles)


def test_bad_model_file(work, assert_one_line_error):
    (work / "broken.h5").write_bytes(b"not a model")
    result = cli(work, "broken.h5", "ts.tif", "-b")
    assert result.returncode == 2
    assert_one_line_error(result, "broken.h5")


def test_progress_lines_without_terminal():
    from unetsl.cli.predict_image import Progress

    stream = stdio.StringIO()
    progress = Progress(stream)
    for done, frames_done in [(4, 0), (8, 1), (12, 1), (16, 2)]:
        progress(done, 16, frames_done, 2)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("time point 1/2: 8 tiles") and "16/16" in lines[1]


# ---------------------------------------------------------------------------- lazy I/O


def _lazy_all(image):
    t = image.shape[0]
    return np.stack([image.data.read(i, slice(None), slice(None), slice(None))
                     for i in range(t)])


@pytest.mark.parametrize("kind", ["imagej", "zlib", "plain", "timeseries", "npy", "zarr",
                                  "ome-zarr"])
def test_open_image_matches_read_image(tmp_path, kind):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 4000, (2, 3, 4, 33, 29)).astype(np.uint16)
    path = tmp_path / "img.tif"
    depth = 1
    if kind == "imagej":
        write_image(path, data, spacing=(2.0, 0.5, 0.5), unit="micron")
    elif kind == "zlib":
        tifffile.imwrite(path, data.transpose(0, 2, 1, 3, 4), imagej=True, compression="zlib",
                         metadata={"axes": "TZCYX"})
    elif kind == "plain":
        tifffile.imwrite(path, data[0, 0])
        data = data[:1, :1]
    elif kind == "timeseries":
        data = data[:, :1, :1]
        tifffile.imwrite(path, data[:, 0, 0], imagej=True, metadata={"axes": "TYX"})
        depth = 3
    elif kind == "npy":
        path = tmp_path / "img.npy"
        np.save(path, data)
    else:
        import zarr

        path = tmp_path / "img.zarr"
        if kind == "zarr":
            array = zarr.open_array(path, mode="w", shape=data.shape, dtype=data.dtype,
                                    chunks=(1, 1, 2, 16, 16))
            array[:] = data
        else:
            group = zarr.open_group(path, mode="w")
            array = group.create_array("0", shape=data.shape, dtype=data.dtype,
                                       chunks=(1, 1, 2, 16, 16))
            array[:] = data
            axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}] + [
                {"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
            group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [
                {"path": "0", "coordinateTransformations": [
                    {"type": "scale", "scale": [1, 1, 2.0, 0.5, 0.25]}]}]}]
    lazy = open_image(path, depth_wanted=depth)
    if kind.endswith("zarr"):
        expected = data
        if kind == "ome-zarr":
            assert lazy.spacing == (2.0, 0.5, 0.25) and lazy.unit == "µm"
    else:
        eager = read_image(path, depth_wanted=depth)
        expected = eager.data
        assert lazy.spacing == pytest.approx(eager.spacing) and lazy.unit == eager.unit
        assert lazy.time_as_depth == eager.time_as_depth
    assert lazy.shape == expected.shape
    np.testing.assert_array_equal(_lazy_all(lazy), expected)
    block = lazy.data.read(lazy.shape[0] - 1, slice(0, 1), slice(5, 20), slice(3, 9))
    np.testing.assert_array_equal(block, expected[-1, :, 0:1, 5:20, 3:9])


@pytest.mark.parametrize("time_as_depth", [False, True])
def test_output_tiff_is_the_file_write_like_writes(tmp_path, time_as_depth):
    from unetsl.io.tiff import Image

    shape = (1, 2, 5, 20, 30) if time_as_depth else (3, 2, 4, 20, 30)
    data = np.random.default_rng(2).random(shape).astype(np.float32)
    like = Image(data, spacing=(3.0, 0.25, 0.5), unit="µm", time_as_depth=time_as_depth)
    write_like(tmp_path / "ref.tif", data, like)
    with OutputTiff(tmp_path / "out.tif", shape, np.float32, spacing=like.spacing,
                    unit=like.unit, time_as_depth=time_as_depth) as out:
        for t in range(shape[0]):
            for y0 in range(0, 20, 7):  # row blocks, as the predictor writes them
                region = (slice(0, shape[2]), slice(y0, min(y0 + 7, 20)), slice(0, 30))
                out.write(t, region, data[t, :, :, y0:y0 + 7])
    ref, got = read_image(tmp_path / "ref.tif"), read_image(tmp_path / "out.tif")
    np.testing.assert_array_equal(got.data, ref.data)
    assert got.spacing == ref.spacing and got.unit == ref.unit
    with tifffile.TiffFile(tmp_path / "ref.tif") as a, tifffile.TiffFile(tmp_path / "out.tif") \
            as b:
        assert a.series[0].axes == b.series[0].axes
        assert a.imagej_metadata == b.imagej_metadata


# ------------------------------------------------------------------- devices and memory

_MIRRORED = textwrap.dedent("""
    import os, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from unetsl.nets.model_files import load_model
    from unetsl.io.arrays import ArraySink, ArraySource
    from unetsl.predict.adapter import KerasTiles
    from unetsl.predict.engine import predict_to_sinks
    from unetsl.predict.reach import receptive_reach
    image = np.random.default_rng(0).random((1, 1, 1, 80, 70)).astype(np.float32)
    plain = load_model(sys.argv[1])
    from unetsl.nets.devices import distribution_strategy
    strategy = distribution_strategy(2, devices=["/cpu:0", "/cpu:1"])
    with strategy.scope():
        mirrored = load_model(sys.argv[1])
    results = []
    for model, distributed in [(plain, False), (mirrored, True)]:
        sink = ArraySink((1, 2, 1, 80, 70))
        predict_to_sinks(KerasTiles(model, distributed=distributed), ArraySource(image), [sink],
                         reach=receptive_reach(model), batch_size=3)  # odd: a short replica
        results.append(sink.array)
    print("replicas", strategy.num_replicas_in_sync)
    print("maxdiff", float(np.abs(results[0] - results[1]).max()))
""")


@pytest.mark.slow
def test_batches_spread_over_two_devices_with_tf_distribute(work):
    """Two logical CPU devices stand in for two GPUs: the same MirroredStrategy path."""
    from unetsl.nets.model_files import save_model
    from unetsl.nets.unet import build_unet

    save_model(build_unet((1, 1, 32, 32), n_labels=2, depth=2, n_filters=2), work / "m1.h5")
    result = subprocess.run([sys.executable, "-c", _MIRRORED, str(work / "m1.h5")],
                            capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "replicas 2" in result.stdout
    diff = float(result.stdout.split("maxdiff")[1])
    assert diff < 1e-5


_RSS = textwrap.dedent("""
    import json, sys
    import numpy as np
    from unetsl.predict.job import PredictionJob

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    model, image, out = sys.argv[1:4]
    warm = PredictionJob.create(model, sys.argv[4], "warm.tif")
    warm.update({"batch size": 8})
    warm.run(probabilities=True)   # loads TensorFlow, traces the model
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")               # reset the peak (VmHWM)
    base = status("VmRSS")
    job = PredictionJob.create(model, image, out)
    job.update({"batch size": 8})
    job.run(probabilities=True)
    print(json.dumps({"base": base, "peak": status("VmHWM")}))
""")


@pytest.mark.slow
def test_keras_path_memory_follows_tiles_not_image(work, tmp_path):
    """A 3000 x 3000 image (2 label channels: 72 MB of float32 probabilities, plus 36 MB of
    float32 input) predicted by predict_image's job: resident memory grows by far less
    than the image would take in memory."""
    from unetsl.nets.model_files import save_model
    from unetsl.nets.unet import build_unet

    save_model(build_unet((1, 1, 128, 128), n_labels=2, depth=2, n_filters=2,
                          spatial_dropout_rate=0.0), tmp_path / "big.h5")
    side = 3000
    image = (np.arange(side)[:, None] * 5 + np.arange(side)[None] * 3) % 200
    tifffile.imwrite(tmp_path / "big.tif", image.astype(np.uint16)[None], imagej=True)
    tifffile.imwrite(tmp_path / "small.tif", image[:300, :300].astype(np.uint16)[None],
                     imagej=True)
    result = subprocess.run([sys.executable, "-c", _RSS, "big.h5", "big.tif", "out.tif",
                             "small.tif"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stderr[-3000:]
    rss = json.loads(result.stdout.strip().splitlines()[-1])
    growth = rss["peak"] - rss["base"]
    in_memory = side * side * 4 * (1 + 2 + 2)  # float32 input, sums, probabilities
    print(f"peak RSS growth {growth / 2**20:.0f} MiB; the image in memory: "
          f"{in_memory / 2**20:.0f} MiB")
    # Half of what the whole image would take: the allocator and TensorFlow's per-thread
    # arenas alone add 55-58 MiB on a 2-core AMD EPYC (AVX2), 43 MiB was too tight there.
    assert growth < in_memory / 2, (growth / 2**20, in_memory / 2**20)
    assert read_image(tmp_path / "out-prob.tif").data.shape == (1, 2, 1, side, side)


def test_progress_bar_on_a_terminal():
    from unetsl.cli.predict_image import Progress

    class Terminal(stdio.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    progress = Progress(stream)
    for done in (4, 8, 16):
        progress(done, 16, done // 8, 2)
    progress.close()
    assert "16/16" in stream.getvalue() and "tile" in stream.getvalue()


def test_tile_shape_setting_is_the_api_tile(work):
    """-D "tile shape=..." predicts with exactly those tiles (the model rebuilt for them)."""
    result = cli(work, "m2d.h5", "ts.tif", "tiles.tif", "-b", "--probabilities",
                 "-D", "tile shape=[3, 48, 64]", "-D", "overlap=[0, 4, 4]")
    assert result.returncode == 0, result.stderr
    model = _model(work / "m2d.h5")
    data = read_image(work / "ts.tif", depth_wanted=3).data  # time as depth, as the CLI
    expected = np.swapaxes(predict(model, data, tile=(3, 48, 64), overlap=(0, 4, 4)), 0, 2)
    np.testing.assert_allclose(read_image(work / "tiles-prob.tif").data, expected, atol=1e-5)
    patch_tiles = np.swapaxes(predict(model, data, tile=(3, 32, 32), overlap=(0, 4, 4)), 0, 2)
    assert np.abs(patch_tiles - expected).max() > 1e-3  # the setting changed the tiling


def _screen(text: str) -> list[str]:
    """What a terminal shows after ``text``: carriage returns overwrite the line, newlines
    move down (tqdm's clear-and-redraw of one bar needs nothing more)."""
    lines, row, col = [""], 0, 0
    for ch in text:
        if ch == "\r":
            col = 0
        elif ch == "\n":
            row, col = row + 1, 0
            if row == len(lines):
                lines.append("")
        else:
            line = lines[row].ljust(col)
            lines[row] = line[:col] + ch + line[col + 1:]
            col += 1
    return [ln.rstrip() for ln in lines if ln.strip()]


def test_one_bar_on_a_terminal_with_log_lines_above_it_not_in_it():
    import logging

    from unetsl.cli.predict_image import Progress

    class Terminal(stdio.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("info: %(message)s"))
    logger = logging.getLogger("unetsl")
    logger.addHandler(handler)
    try:
        progress = Progress(stream)
        progress(0, 8, 0, 5)
        progress(4, 8, 2, 5)
        logger.warning("a line while the bar runs")
        progress(8, 8, 5, 5)  # the last tile closes the bar
        logger.warning("a line after the last tile")
        progress.close()
    finally:
        logger.removeHandler(handler)
    screen = _screen(stream.getvalue())
    bars = [ln for ln in screen if "tile" in ln and "|" in ln]
    assert len(bars) == 1 and "8/8" in bars[0] and "5 time points" in bars[0], screen
    assert "info: a line while the bar runs" in screen  # a whole line of its own
    assert screen[-1] == "info: a line after the last tile", screen
    assert screen.index("info: a line while the bar runs") < screen.index(bars[0])


def test_lines_name_the_frames_of_a_time_series_read_as_depth(tmp_path):
    """Without a terminal: one line per finished time point, counting the movie's frames."""
    import keras

    from unetsl.cli.predict_image import Progress
    from unetsl.data.synthetic import epithelium_time_series, write_imagej
    from unetsl.nets.model_files import save_model
    from unetsl.nets.unet import build_unet
    from unetsl.predict.job import PredictionJob

    keras.utils.set_random_seed(0)
    save_model(build_unet((1, 2, 16, 16), n_labels=1, depth=1, n_filters=1,
                          spatial_dropout_rate=0.0), tmp_path / "m.keras")
    write_imagej(tmp_path / "ts.tif", epithelium_time_series((5, 32, 32), seed=1).image, "2d")
    stream = stdio.StringIO()
    job = PredictionJob.create(tmp_path / "m.keras", tmp_path / "ts.tif", tmp_path / "out.tif")
    job.update({"tile shape": [2, 16, 16], "overlap": [0, 0, 0], "batch size": 1})
    job.run(progress=Progress(stream))
    lines = stream.getvalue().splitlines()
    assert lines and all("/5" in ln for ln in lines), lines
    assert "1/1" not in stream.getvalue()
    assert lines[-1].split(":")[0].endswith("5/5"), lines
