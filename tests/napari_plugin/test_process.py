"""The worker process: napari's process never imports TensorFlow, errors are one line, a
dead worker is replaced, cancel reaches a running task."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from unetsl.errors import UnetslError
from unetsl.napari.process import Cancelled, WorkerProcess

SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path

    import numpy as np
    from napari.components import ViewerModel
    from qtpy.QtWidgets import QApplication

    from unetsl.data.synthetic import epithelium_time_series, write_dataset
    from unetsl.napari.inspect_widget import InspectWidget
    from unetsl.napari.predict_widget import PredictWidget
    from unetsl.napari.train_widget import TrainWidget

    app = QApplication([])
    root = Path(sys.argv[1])
    viewer = ViewerModel()
    movie = epithelium_time_series((3, 32, 32), seed=2)
    viewer.add_image(movie.image, name="movie", axis_labels=("t", "y", "x"))
    viewer.add_labels(movie.labels, name="movie labels", axis_labels=("t", "y", "x"))
    train, predict, inspect = TrainWidget(viewer), PredictWidget(viewer), InspectWidget(viewer)
    for widget in (train, predict, inspect):
        widget.synchronous = True
    train.config_file.value = root / "m.json"
    train.image.value, train.labels.value = "movie", "movie labels"
    train.add_layers()
    train.run()
    print("train:", train.status.value)
    predict.model_file.value = root / "m-latest.h5"
    predict.image.value = "movie"
    predict.run()
    print("predict:", predict.status.value)
    inspect.config_file.value = root / "m.json"
    inspect.run()
    print("inspect:", inspect.status.value)
    print("layers:", sorted(layer.name for layer in viewer.layers))
    print("loaded:", sorted(m for m in ("tensorflow", "keras", "jax", "torch") if m in sys.modules))
""")


def test_napari_never_loads_tensorflow(tmp_path):
    """Train, predict and inspect through the widgets in a fresh interpreter: the work is
    done (in the worker processes) and the widgets' process has not imported TensorFlow,
    which crashes napari under Mesa's OpenGL."""
    from unetsl.config.model_config import Config

    cfg = Config(path=tmp_path / "m.json")
    cfg.update({"input shape": [1, 3, 16, 16], "depth": 2, "n filters": 2, "n labels": 2,
                "stride": [0, 3, 8, 8], "batch size": 2, "epochs": 1, "seed": 7,
                "validation fraction": 0.0, "spatial dropout rate": 0.0, "data sources": []})
    cfg.save()
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    ran = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True,
                         text=True, timeout=600, env=env)
    assert ran.returncode == 0, ran.stderr[-3000:]
    out = ran.stdout
    assert "train: trained 1/1 epochs" in out, out
    assert "predict: predicted movie" in out, out
    assert "inspect: 4 layers of 4 patches" in out, out
    assert "'movie labels'" in out and "'movie predicted labels'" in out, out
    assert "loaded: []" in out, out


def test_errors_are_one_line_and_a_dead_worker_is_replaced(tmp_path):
    process = WorkerProcess("test")
    try:
        with pytest.raises(UnetslError, match=r"^.*config\.json.*$") as error:
            process.call("inspect", config=str(tmp_path / "config.json"), source=0, count=1,
                         seed=0)
        assert "\n" not in str(error.value)
        first = process._process.pid
        process._process.kill()  # as the out-of-memory killer would
        with pytest.raises(UnetslError, match=r"^the unetsl test process stopped during "
                           r"inspect \(exit code -9; out of memory\?\)"):
            process.call("inspect", config="x.json", source=0, count=1, seed=0)
        with pytest.raises(UnetslError, match=r"^model file '.*missing\.h5' does not exist$"):
            process.call("predict", model=str(tmp_path / "missing.h5"), image_name="x",
                         image=np.zeros((1, 1, 1, 8, 8), np.float32), settings={})
        assert process.running and process._process.pid != first  # a new process answered
    finally:
        process.close()
    assert not process.running


def test_cancel_reaches_a_running_prediction(tmp_path):
    """Cancel while the worker predicts: the task stops at its next batch and the call
    raises Cancelled; the worker then predicts again."""
    import keras

    from unetsl.nets.model_files import save_model
    from unetsl.nets.unet import build_unet

    keras.utils.set_random_seed(0)
    save_model(build_unet((1, 1, 16, 16), n_labels=1, depth=2, n_filters=2,
                          spatial_dropout_rate=0.0), tmp_path / "m.h5")
    image = np.random.default_rng(0).random((40, 1, 1, 64, 64), dtype=np.float32)
    process = WorkerProcess("test")
    seen: list[int] = []

    def progress(done: int, total: int, *more: object) -> None:
        seen.append(done)
        if len(seen) == 2:
            threading.Thread(target=process.cancel).start()  # the user's click

    settings = {"batch size": 1, "tile shape": [1, 16, 16], "overlap": [0, 0, 0]}
    try:
        with pytest.raises(Cancelled):
            process.call("predict", progress=progress, model=str(tmp_path / "m.h5"),
                         image_name="noise", image=image, settings=dict(settings))
        assert 2 <= len(seen) < 40 * 16, len(seen)
        result = process.call("predict", model=str(tmp_path / "m.h5"), image_name="noise",
                              image=image[:2], settings=dict(settings))
        assert result.probabilities[0].shape == (2, 1, 1, 64, 64)
    finally:
        process.close()


def test_a_stop_pressed_while_the_worker_starts_is_kept(tmp_path):
    """Stop before the training could take it (TensorFlow still loading): the training
    stops at its first batch boundary and saves -latest, instead of running every epoch."""
    from unetsl.config.model_config import Config
    from unetsl.data.synthetic import write_dataset

    write_dataset(tmp_path, "2d", n_images=1, shape=(3, 32, 32), seed=2, distance=False)
    cfg = Config(path=tmp_path / "m.json")
    cfg.update({"input shape": [1, 1, 16, 16], "depth": 2, "n filters": 2, "n labels": 2,
                "stride": [0, 1, 8, 8], "batch size": 2, "epochs": 50, "seed": 7,
                "validation fraction": 0.0, "spatial dropout rate": 0.0,
                "data sources": [{"source type": "paired directories",
                                  "input folders": ["images"], "label folders": ["labels"],
                                  "labeller": "multiclass labels"}]})
    cfg.save()
    process = WorkerProcess("test")
    try:
        process.start()
        process.stop()  # before the task is even sent
        result = process.call("train", config=str(cfg.path), resume=False)
    finally:
        process.close()
    assert result["interrupted"] is not None and result["epochs_done"] == 0
    assert (tmp_path / "m-latest.h5").exists()
