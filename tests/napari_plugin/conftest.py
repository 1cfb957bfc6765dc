"""The napari plugin's tests run without a display: Qt's offscreen platform, and a
``napari.components.ViewerModel`` (no OpenGL canvas) for the widgets to work on."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before any QApplication exists

pytest.importorskip("napari", reason="the napari extra is not installed")
pytest.importorskip("magicgui", reason="the napari extra is not installed")
pytest.importorskip("qtpy", reason="the napari extra is not installed")


@pytest.fixture(scope="session")
def qapp():
    """The one QApplication of the test session (offscreen)."""
    from qtpy.QtWidgets import QApplication

    return QApplication.instance() or QApplication([])


@pytest.fixture
def viewer(qapp):
    """An empty napari viewer model: layers, dims and events without a window."""
    from napari.components import ViewerModel

    return ViewerModel()
