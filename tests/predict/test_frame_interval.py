"""End to end: a 60 s time-lapse movie keeps its frame interval in predict_image's outputs and
in the cells label image segment_cells makes from them (issue 28 item 7)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from tests.tiny_models import save_tiny_unet

from unetsl.cells.files import segment_file
from unetsl.io.outputs import with_suffix
from unetsl.io.tiff import write_image
from unetsl.predict.job import PredictionJob

zarr = pytest.importorskip("zarr")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """m.h5: a tiny 2-D U-Net (2 labels, 16 x 16 patch); movie.tif: 2 frames, 60 s apart."""
    folder = tmp_path_factory.mktemp("interval")
    save_tiny_unet(folder / "m.h5")
    movie = np.random.default_rng(0).integers(0, 1000, (2, 1, 1, 32, 28)).astype(np.uint16)
    write_image(folder / "movie.tif", movie, spacing=(1.0, 0.5, 0.5), unit="µm",
                frame_interval=60.0)
    return folder


def interval_of(path: Path) -> float | None:
    """The interval as Fiji, OME readers or OME-Zarr viewers read it, by the file's kind."""
    if str(path).endswith(".zarr"):
        multiscale = zarr.open_group(str(path), mode="r").attrs["multiscales"][0]
        axis = multiscale["axes"][0]
        assert axis == {"name": "t", "type": "time", "unit": "second"}
        return multiscale["datasets"][0]["coordinateTransformations"][0]["scale"][0]
    with tifffile.TiffFile(path) as tif:
        if str(path).endswith(".ome.tif"):
            pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
            assert pixels["TimeIncrementUnit"] == "s"
            return pixels["TimeIncrement"]
        assert tif.imagej_metadata["tunit"] == "sec"
        return tif.imagej_metadata["finterval"]


@pytest.mark.parametrize("name", ["pred.tif", "pred.ome.tif", "pred.ome.zarr"])
def test_predictions_keep_the_movies_frame_interval(work, tmp_path, name):
    job = PredictionJob.create(work / "m.h5", work / "movie.tif", tmp_path / name)
    job.update({"batch size": 4})
    labels, floats = job.run(probabilities=True).written
    assert floats == with_suffix(tmp_path / name, "-prob")
    assert interval_of(labels) == 60.0 and interval_of(floats) == 60.0


def test_cells_of_a_movie_keep_its_frame_interval(tmp_path):
    from tests.cells.conftest import membrane_probability, voronoi

    frame = membrane_probability(voronoi((40, 40), 10.0))
    write_image(tmp_path / "prob.tif", np.stack([frame, frame])[:, None, None],
                spacing=(1.0, 0.5, 0.5), frame_interval=60.0)
    result = segment_file(tmp_path / "prob.tif", tmp_path / "cells.tif")
    assert result.labels.shape[0] == 2 and result.labels.max() > 1
    assert interval_of(tmp_path / "cells.tif") == 60.0
    segment_file(tmp_path / "prob.tif", tmp_path / "cells.ome.zarr")
    assert interval_of(tmp_path / "cells.ome.zarr") == 60.0
