import numpy as np
import pytest
from skimage.draw import disk

from unetsl.cells import CellSettings, segment
from unetsl.errors import UnetslError
from unetsl.evaluate.instances import instance_scores, match


def test_membrane_mode_recovers_cells_despite_a_gap(drawings):
    cells = drawings.voronoi((96, 96), 24, seed=1)
    gap = drawings.neighbours_with_longest_border(cells)
    prob = drawings.membrane_probability(cells, gap_between=gap)
    labels = segment(prob[None, None])
    assert labels.shape == (1, 1, 96, 96) and labels.dtype == np.int32
    assert labels.min() > 0  # cells tile the image
    scores = instance_scores(cells[None, None], labels)
    assert scores["f1"] == 1.0
    assert scores["mean_matched_iou"] > 0.85


def test_foreground_mode_splits_touching_nuclei():
    truth = np.zeros((64, 64), np.int32)
    truth[disk((32, 20), 10)] = 1
    truth[disk((32, 38), 10)] = 2  # overlaps the first: touching nuclei
    truth[disk((10, 52), 6)] = 3
    prob = np.where(truth > 0, 0.9, 0.05).astype(np.float32)
    labels = segment(prob, mode="foreground")
    assert len(np.unique(labels[labels > 0])) == 3
    assert instance_scores(truth[None, None], labels)["f1"] == 1.0
    assert (labels[0, 0][truth == 0] == 0).all()


def test_anisotropic_stack_matches_isotropic_resampling(drawings):
    iso = drawings.voronoi((30, 42, 42), 16, seed=3)
    prob = drawings.membrane_probability(iso)
    coarse = prob[1::3]  # z spacing 3x the xy spacing
    truth = iso[1::3]
    labels_iso = segment(prob[None], spacing=(1, 1, 1))
    labels_aniso = segment(coarse[None], spacing=(3, 1, 1))
    assert instance_scores(truth[None], labels_aniso)["f1"] >= 0.9
    pairs, _ = match(labels_iso[0, 1::3], labels_aniso[0])
    n_iso = len(np.unique(labels_iso[0, 1::3]))
    assert len(pairs) >= 0.9 * n_iso


def test_distance_map_seeds(drawings):
    cells = drawings.voronoi((64, 64), 20, seed=2)
    prob = drawings.membrane_probability(cells)
    from scipy import ndimage as ndi

    distance = ndi.distance_transform_edt(prob < 0.5)
    labels = segment(prob[None, None], distance=distance[None, None])
    assert instance_scores(cells[None, None], labels)["f1"] == 1.0


@pytest.mark.parametrize("bad, words", [
    (np.arange(400, dtype=np.int32).reshape(20, 20), "label image"),
    (np.zeros((20, 20), np.float32), "constant"),
    (np.full((20, 20), np.nan, np.float32), "NaN"),
    (np.full((20, 20), 2.5, np.float32), "[0, 1]"),
    (np.zeros((0, 4, 4, 4), np.float32), "empty"),
    (np.zeros((4, 4, 4), np.float32), "(t, z, y, x)"),
])
def test_bad_input_is_a_one_line_error(bad, words):
    with pytest.raises(UnetslError) as error:
        segment(bad)
    message = str(error.value)
    assert words in message and "\n" not in message


def test_settings_overrides_and_errors(drawings):
    settings = CellSettings.from_overrides({"cell min size": 5, "cell seed sigma": 0.5})
    assert settings.min_size == 5 and settings.seed_sigma == 0.5
    assert CellSettings.from_overrides(settings.to_config()) == settings
    for overrides, words in [({"cell min size": -1}, "cell min size"),
                             ({"cell threshold": "high"}, "cell threshold"),
                             ({"cell mode": "nuclei"}, "cell mode"),
                             ({"cell min size": 2.5}, "whole number"),
                             ({"cell bogus": 1}, "unknown cell setting")]:
        with pytest.raises(UnetslError, match=words.split()[0]) as error:
            CellSettings.from_overrides(overrides)
        assert words in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(UnetslError, match="spacing"):
        segment(drawings.membrane_probability(drawings.voronoi((32, 32), 12)), spacing=(1, 0, 1))


def test_weak_borders_merge_and_time_window(drawings):
    from unetsl.cells.segment import merge_weak_borders

    labels = np.zeros((20, 20), np.int32)
    labels[:, :10], labels[:, 10:] = 1, 2
    membrane = np.zeros((20, 20), np.float32)
    assert np.unique(merge_weak_borders(labels, membrane, 0.3)).tolist() == [1]
    membrane[:, 9:11] = 0.9  # a real membrane between them
    assert np.unique(merge_weak_borders(labels, membrane, 0.3)).tolist() == [1, 2]
    with pytest.raises(UnetslError, match="odd"):
        CellSettings.from_overrides({"cell time window": 2})
    # A membrane missed in the middle frame is taken from its neighbours in time.
    cells = drawings.voronoi((64, 64), 20, seed=4)
    prob = drawings.membrane_probability(cells)
    series = np.stack([prob, np.full_like(prob, 0.02), prob])[:, None]
    series[1, 0, 0, 0] = 0.5
    labels = segment(series)
    assert instance_scores(np.stack([cells] * 3)[:, None], labels)["f1"] == 1.0
    alone = segment(series, settings=CellSettings(time_window=1))
    assert len(np.unique(alone[1])) == 1


def touching_nuclei():
    """Two squares that touch along a column (no neck a distance transform could cut),
    a small blob whose interior the boundary covers whole, and their boundary map."""
    truth = np.zeros((1, 1, 40, 60), np.int32)
    truth[0, 0, 10:30, 10:30] = 1
    truth[0, 0, 10:30, 30:50] = 2
    truth[0, 0, 33:36, 52:55] = 3
    from unetsl.data.labellers import instance_labels

    target = instance_labels(truth[0], 2).astype(float)
    foreground = 0.1 + 0.8 * target[0]
    boundary = 0.05 + 0.9 * target[1]
    return truth, foreground[None], boundary[None]


def test_boundary_map_splits_touching_nuclei():
    truth, foreground, boundary = touching_nuclei()
    settings = CellSettings(mode="foreground", min_size=4)
    plain = segment(foreground, spacing=(1, 1, 1), settings=settings)
    assert len(np.unique(plain[plain > 0])) == 2  # the squares as one object, and the blob
    split = segment(foreground, spacing=(1, 1, 1), settings=settings, boundary=boundary)
    scores = instance_scores(split, truth)
    assert scores["f1"] == 1.0 and len(np.unique(split[split > 0])) == 3
    np.testing.assert_array_equal(split > 0, truth > 0)  # the boundary pixels are flooded


def test_a_boundary_map_needs_foreground_mode_and_the_same_shape():
    _, foreground, boundary = touching_nuclei()
    with pytest.raises(UnetslError, match='boundary map is for "cell mode" foreground'):
        segment(foreground, settings=CellSettings(), boundary=boundary)
    with pytest.raises(UnetslError, match=r"boundary map shape \(1, 1, 40, 59\) differs"):
        segment(foreground, mode="foreground", boundary=boundary[..., 1:])
