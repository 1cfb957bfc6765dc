"""Predict widget: the labels predict_image writes, on the image's scale; cancel stops it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from tests.tiny_models import save_tiny_unet

from unetsl.data.synthetic import epithelium_time_series, write_imagej
from unetsl.io.tiff import read_image


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A tiny 2D-time-series model (3 frames as z) and a 4-frame movie as an ImageJ TIFF."""
    folder = tmp_path_factory.mktemp("napari-predict")
    save_tiny_unet(folder / "tiny.h5", (1, 3, 32, 32), seed=0)
    write_imagej(folder / "movie.tif", epithelium_time_series((4, 40, 48), seed=1).image, "2d")
    return folder


def _widget(viewer, work):
    from unetsl.napari.predict_widget import PredictWidget

    image = read_image(work / "movie.tif")
    viewer.add_image(image.data[:, 0, 0], name="movie", scale=(1.0, *image.spacing[1:]),
                     axis_labels=("t", "y", "x"))
    widget = PredictWidget(viewer)
    widget.synchronous = True
    widget.model_file.value = work / "tiny.h5"
    widget.image.value = "movie"
    widget.tile.value = "3, 32, 32"  # several tiles on the small movie
    return widget


def test_predict_gives_predict_image_labels_on_the_image_scale(viewer, work, tmp_path):
    from click.testing import CliRunner

    from unetsl.cli.predict_image import main

    widget = _widget(viewer, work)
    assert widget.axes.value == "tyx"
    widget.run()
    assert widget.status.value == "predicted movie", widget.status.value
    labels = viewer.layers["movie predicted labels"]
    probs = [viewer.layers[f"movie prob {k}"] for k in range(2)]
    assert type(labels).__name__ == "Labels" and labels.data.shape == (4, 40, 48)
    assert tuple(labels.scale) == pytest.approx(tuple(viewer.layers["movie"].scale))
    assert probs[0].data.dtype == np.float32

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        ran = CliRunner().invoke(main, [str(work / "tiny.h5"), str(work / "movie.tif"),
                                        "out.tif", "-b", "--probabilities",
                                        "-D", "tile shape=[3, 32, 32]"])
    finally:
        os.chdir(cwd)
    assert ran.exit_code == 0, ran.output
    expected = read_image(tmp_path / "out.tif").data[:, 0, 0]
    np.testing.assert_array_equal(labels.data, expected)
    expected_probs = read_image(tmp_path / "out-prob.tif").data
    np.testing.assert_array_equal(probs[1].data, expected_probs[:, 1, 0])

    widget.run()  # a second run replaces the layers' data rather than adding layers
    assert len(viewer.layers) == 4


def test_averaged_views_are_predict_images_test_time_augmentation(viewer, work, tmp_path):
    from click.testing import CliRunner

    from unetsl.cli.predict_image import main

    widget = _widget(viewer, work)
    widget.views.value = True
    widget.run()
    assert widget.status.value == "predicted movie", widget.status.value
    ran = CliRunner().invoke(main, [str(work / "tiny.h5"), str(work / "movie.tif"),
                                    str(tmp_path / "out.tif"), "-b", "--probabilities", "-D",
                                    "tile shape=[3, 32, 32]", "-D", "test time augmentation=true"])
    assert ran.exit_code == 0, ran.output
    expected = read_image(tmp_path / "out-prob.tif").data[:, 1, 0]
    np.testing.assert_allclose(viewer.layers["movie prob 1"].data, expected, atol=1e-6)


def test_cancel_stops_the_prediction_and_adds_nothing(viewer, work, monkeypatch):
    from unetsl.napari import predict_widget
    from unetsl.napari.tasks import Cancelled, TaskProgress

    class CancelAtOnce(TaskProgress):
        def __call__(self, done, total, *more):
            self.cancel()  # as the bar's cancel button would, during the run
            return super().__call__(done, total, *more)

    monkeypatch.setattr(predict_widget, "TaskProgress", CancelAtOnce)
    widget = _widget(viewer, work)
    widget.run()
    assert widget.status.value == "cancelled"
    assert [layer.name for layer in viewer.layers] == ["movie"]
    assert widget.run_button.enabled and not widget.cancel_button.enabled
    with pytest.raises(Cancelled):
        widget.progress(1, 10)


def test_bad_settings_are_one_line_messages(viewer, work):
    widget = _widget(viewer, work)
    widget.tile.value = "32, 32"
    widget.run()
    assert widget.status.value.startswith('"tile shape" must be auto or three integers')
    widget.tile.value = "auto"
    widget.axes.value = "zyxq"
    widget.run()
    assert "axes 'zyxq' do not name its 3 dimensions" in widget.status.value
    assert [layer.name for layer in viewer.layers] == ["movie"]


def test_a_layer_the_user_made_is_never_replaced(viewer, work):
    """Predict's labels used to be named like the sample's annotations and overwrote them."""
    widget = _widget(viewer, work)
    painted = np.zeros((4, 40, 48), np.uint8)
    painted[:, 5:9, 5:9] = 3
    viewer.add_labels(painted.copy(), name="movie predicted labels")
    widget.run()
    np.testing.assert_array_equal(viewer.layers["movie predicted labels"].data, painted)
    assert "movie predicted labels [2]" in viewer.layers
    widget.run()  # its own result is updated in place, no "[3]"
    assert [layer.name for layer in viewer.layers].count("movie predicted labels [2]") == 1
    assert "movie predicted labels [3]" not in viewer.layers


def test_an_empty_model_field_says_so(viewer, work):
    widget = _widget(viewer, work)
    widget.model_file.value = ""
    widget.run()
    assert widget.status.value.startswith("choose a model file (.h5 or .keras)")
    widget.model_file.value = work / "missing.h5"
    widget.run()
    assert widget.status.value == f"model file '{work / 'missing.h5'}' does not exist"
