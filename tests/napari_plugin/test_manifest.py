"""The npe2 manifest (npe2 validate), File > Open Sample, and the widgets in a real viewer."""

from __future__ import annotations

from importlib.metadata import entry_points

import numpy as np
import pytest

WIDGETS = ["New model", "Predict", "Segment cells", "Train", "Inspect training data",
           "Review cells"]


def test_npe2_validate_passes_with_imports():
    from npe2.cli import app
    from typer.testing import CliRunner

    ran = CliRunner().invoke(app, ["validate", "unetsl", "--imports"])
    assert ran.exit_code == 0, ran.output
    assert "Manifest for 'unetsl' valid!" in ran.output
    found = [e for e in entry_points(group="napari.manifest") if e.name == "unetsl"]
    assert [e.value for e in found] == ["unetsl.napari:napari.yaml"]


def test_manifest_lists_the_widgets_and_samples():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("unetsl")
    assert [w.display_name for w in manifest.contributions.widgets] == WIDGETS
    assert [s.key for s in manifest.contributions.sample_data] == ["epithelium-movie",
                                                                    "epithelium-stack"]


def test_samples_open_with_their_axes_and_pixel_size(viewer):
    from npe2 import PluginManager

    PluginManager.instance().discover()  # what napari does when it starts
    viewer.open_sample("unetsl", "epithelium-movie")
    movie, labels = viewer.layers
    assert movie.name == "epithelium movie" and movie.data.shape == (5, 128, 128)
    assert tuple(movie.axis_labels) == ("t", "y", "x") and movie.scale[1] == pytest.approx(0.2)
    assert str(movie.units[-1]) == "micrometer"
    assert type(labels).__name__ == "Labels" and set(np.unique(labels.data)) <= {0, 1, 3}
    viewer.open_sample("unetsl", "epithelium-stack")
    stack = viewer.layers["epithelium stack"]
    assert tuple(stack.axis_labels) == ("z", "y", "x") and stack.scale[0] == pytest.approx(0.5)


def _opengl_works() -> bool:
    """Whether the viewer's canvas got a working OpenGL context (not on CI machines)."""
    from vispy.gloo import gl

    try:
        return bool(gl.glGetParameter(gl.GL_VERSION))
    except Exception:
        return False


def test_a_real_viewer_docks_every_widget_and_opens_a_sample(qapp):
    import napari

    from unetsl.napari.cells_widget import CellsWidget
    from unetsl.napari.inspect_widget import InspectWidget
    from unetsl.napari.new_model_widget import NewModelWidget
    from unetsl.napari.predict_widget import PredictWidget
    from unetsl.napari.review_widget import ReviewWidget
    from unetsl.napari.train_widget import TrainWidget

    viewer = napari.Viewer(show=False)
    try:
        docked = [viewer.window.add_plugin_dock_widget("unetsl", name)[1] for name in WIDGETS]
        assert [type(w) for w in docked] == [NewModelWidget, PredictWidget, CellsWidget,
                                             TrainWidget, InspectWidget, ReviewWidget]
        if not _opengl_works():
            pytest.skip("a full napari.Viewer needs OpenGL to show layers, which this "
                        "machine lacks (the widgets are tested on a ViewerModel)")
        viewer.open_sample("unetsl", "epithelium-movie")
        assert docked[1].image.choices == ("epithelium movie",)
        assert docked[1].axes.value == "tyx"
    finally:
        viewer.close()


def test_every_field_has_hover_help(viewer):
    from magicgui.widgets import Label

    from unetsl.napari.cells_widget import CellsWidget
    from unetsl.napari.inspect_widget import InspectWidget
    from unetsl.napari.new_model_widget import NewModelWidget
    from unetsl.napari.predict_widget import PredictWidget
    from unetsl.napari.review_widget import ReviewWidget
    from unetsl.napari.train_widget import TrainWidget

    for kind in (NewModelWidget, PredictWidget, CellsWidget, TrainWidget, InspectWidget,
                 ReviewWidget):
        widget = kind(viewer)
        silent = [field.label or field.text for field in widget.form
                  if not isinstance(field, Label) and not field.tooltip]
        assert silent == [], f"{kind.__name__}: no tooltip on {silent}"
