"""Train widget: layers become a paired source, training draws its curves, Stop saves -latest
(one real training of a tiny model, stopped after its first epoch)."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest

from unetsl.data.synthetic import epithelium_time_series

PATCH = [1, 3, 16, 16]


@pytest.fixture
def project(tmp_path) -> Path:
    """A config m.json without data sources and its untrained tiny model m.h5."""
    import keras

    from unetsl.config.model_config import Config
    from unetsl.nets.model_files import save_model
    from unetsl.nets.unet import build_unet

    cfg = Config(path=tmp_path / "m.json")
    cfg.update({"input shape": PATCH, "depth": 2, "n filters": 2, "n labels": 2,
                "stride": [0, 3, 8, 8], "batch size": 2, "epochs": 3, "seed": 7,
                "validation fraction": 0.0, "spatial dropout rate": 0.0, "data sources": []})
    cfg.save()
    keras.utils.set_random_seed(1)
    save_model(build_unet(PATCH, n_labels=2, depth=2, n_filters=2, pooling=(1, 2, 2),
                          spatial_dropout_rate=0.0), cfg.model_path)
    return cfg.path


def _widget(viewer, project):
    from unetsl.napari.train_widget import TrainWidget

    sample = epithelium_time_series((3, 32, 32), seed=2)
    viewer.add_image(sample.image, name="movie", axis_labels=("t", "y", "x"))
    viewer.add_labels(sample.labels, name="movie labels", axis_labels=("t", "y", "x"))
    widget = TrainWidget(viewer)
    widget.synchronous = True
    widget.config_file.value = project
    return widget, sample


def test_layers_become_a_paired_source_training_draws_curves_and_stops(viewer, project):
    from unetsl.config.model_config import Config
    from unetsl.io.tiff import read_image
    from unetsl.training.checkpoints import read_state

    widget, sample = _widget(viewer, project)
    assert widget.sources.value == "no data sources"
    widget.image.value, widget.labels.value = "movie", "movie labels"
    assert widget.axes.value == "tyx"
    widget.add_layers()
    assert widget.status.value == "source 0: 1 image pair(s) from movie and movie labels"
    entry = Config.load(project)["data sources"][0]
    assert entry["input folders"] == ["movie/images"] and entry["labeller"] == "multiclass labels"
    written = read_image(project.parent / "movie" / "labels" / "movie.tif")
    np.testing.assert_array_equal(written.data[:, 0, 0], sample.labels)
    assert widget.sources.value.startswith("0. {")
    widget.add_layers()  # the same pair again: files rewritten, no second source
    assert len(Config.load(project)["data sources"]) == 1

    drawn = widget.curves.add_epoch

    def draw_then_stop(epoch, logs):  # the user presses Stop once the first epoch is drawn
        drawn(epoch, logs)
        widget.stop()

    widget.curves.add_epoch = draw_then_stop
    widget.run()
    # the stop reaches the worker process while it trains on (usually within epoch 2)
    done = widget.result["epochs_done"]
    assert done in (1, 2) and widget.status.value.startswith(
        f"stopped at epoch {done}/3: saved m-latest.h5; best loss"), widget.status.value
    assert widget.result["interrupted"] == signal.SIGINT
    state = read_state(Path(widget.result["latest"]))
    assert state is not None and state.interrupted and state.epochs_done == done
    assert widget.curves.epochs["loss"][0][0] == 1 and len(widget.curves.batches) >= 2
