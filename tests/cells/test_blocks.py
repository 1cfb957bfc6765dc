"""Cells of frames larger than memory (issue 29): the block plan, stitching across block faces,
and segment_file / segment_cells writing block by block what the whole-frame run writes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from unetsl.cells import CellSettings, segment
from unetsl.cells.blocks import final_core, plan_blocks, segment_frame_blocks
from unetsl.cells.files import segment_file
from unetsl.data import synthetic
from unetsl.errors import UnetslError
from unetsl.evaluate.instances import instance_scores
from unetsl.io import omezarr
from unetsl.io.lazy import open_image
from unetsl.io.tiff import write_image

SPACING = (2.0, 1.0, 1.0)


def _probability(shape=(24, 128, 128), seed=0) -> np.ndarray:
    """A network-like membrane probability of a synthetic 3D epithelium (columnar cells)."""
    sample = synthetic.epithelium_stack(shape=shape, seed=seed)
    blurred = ndi.gaussian_filter((sample.labels & 1).astype(np.float32), (0.5, 1, 1))
    return blurred / blurred.max()


def _blockwise(probability, settings, tmp_path):
    plan = plan_blocks(probability.shape, SPACING, settings)
    lookups, n = segment_frame_blocks(lambda region: (probability[region], None), plan,
                                      "membrane", SPACING, settings, tmp_path)
    out = np.zeros(probability.shape, np.int64)
    for block in plan.blocks():
        out[block.core] = final_core(block, lookups[block.index], tmp_path)
    return plan, out, n


@pytest.mark.parametrize("shape, budget", [((24, 128, 128), 100_000), ((1, 300, 200), 9_000),
                                           ((40, 64, 64), 20_000)])
def test_plan_tiles_the_frame_within_the_budget(shape, budget):
    settings = CellSettings(block_voxels=budget, block_halo=8)
    assert plan_blocks(shape, SPACING, CellSettings(block_voxels=math.prod(shape))) is None
    plan = plan_blocks(shape, SPACING, settings)
    covered = np.zeros(shape, np.int32)
    for block in plan.blocks():
        covered[block.core] += 1
        assert math.prod(s.stop - s.start for s in block.padded) <= budget
        for core, padded, halo, n in zip(block.core, block.padded, plan.halo, shape):
            assert padded.start == max(0, core.start - halo)
            assert padded.stop == min(n, core.stop + halo)
    assert (covered == 1).all()  # every voxel in exactly one core
    assert plan.halo[1:] == (8, 8) and plan.halo[0] == (0 if shape[0] == 1 else 4)


def test_blockwise_cells_are_the_whole_frames_cells(tmp_path):
    probability = _probability()
    whole = segment(probability[None], "membrane", SPACING)[0]
    plan, blocks, n = _blockwise(probability, CellSettings(block_voxels=150_000), tmp_path)
    assert math.prod(plan.grid) >= 4  # cells are cut by block faces in y and x
    assert n == len(np.unique(blocks[blocks > 0])) and blocks.max() == n  # ids 1..n
    scores = instance_scores(whole[None].astype(np.int64), blocks[None])
    assert scores["f1"] >= 0.99 and scores["mean_matched_iou"] >= 0.99, scores


def test_a_cell_cut_by_block_faces_gets_one_id_and_neighbours_stay_apart(tmp_path):
    """Four big cells meeting at a block corner: each crosses two faces."""
    shape = (4, 96, 96)
    truth = np.zeros(shape, np.int32)
    truth[:, :50, :50], truth[:, :50, 50:], truth[:, 50:, :50], truth[:, 50:, 50:] = 1, 2, 3, 4
    membrane = np.zeros(shape, np.float32)
    membrane[:, 49:51, :] = membrane[:, :, 49:51] = 1.0
    settings = CellSettings(block_voxels=4 * 64 * 64, block_halo=12)
    plan, labels, n = _blockwise(membrane, settings, tmp_path)
    assert plan.grid[1] > 1 and plan.grid[2] > 1
    assert n == 4
    for cell in range(1, 5):
        inside = labels[(truth == cell) & (membrane == 0)]
        assert len(np.unique(inside)) == 1 and inside[0] > 0


@pytest.fixture(scope="module")
def stack_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("big")
    probability = _probability((16, 96, 96), seed=2)
    write_image(folder / "prob.tif", probability[None, None], spacing=SPACING, unit="µm")
    movie = np.stack([probability, probability])[:, None]
    write_image(folder / "movie.tif", movie, spacing=SPACING, unit="µm")
    return folder


@pytest.mark.parametrize("name", ["blocks.ome.zarr", "blocks.tif"])
def test_segment_file_block_by_block_writes_the_whole_runs_cells(stack_file, tmp_path, name,
                                                                 caplog):
    whole = segment_file(stack_file / "prob.tif", tmp_path / "whole.tif")
    settings = CellSettings(block_voxels=60_000, block_halo=12)
    with caplog.at_level("INFO", logger="unetsl"):
        result = segment_file(stack_file / "prob.tif", tmp_path / name, settings=settings)
    assert "in 8 blocks of 16x24x48 (halo 6x12x12" in caplog.text
    assert result.labels is None and result.frames == 1 and result.written == [tmp_path / name]
    written = open_image(tmp_path / name)
    assert written.spacing == pytest.approx(SPACING) and written.unit == "µm"
    labels = written.data.read(0, slice(None), slice(None), slice(None))[0]
    scores = instance_scores(whole.labels.astype(np.int64), labels[None].astype(np.int64))
    # 43 cells, so one cell cut differently is F1 0.988 (1.0 on an AMD EPYC)
    assert scores["f1"] >= 0.97 and result.count == len(np.unique(labels[labels > 0]))
    assert not list(tmp_path.glob(".unetsl-cells-*"))  # the scratch folder is gone


def test_what_blocks_cannot_do_yet_is_said_before_any_work(stack_file, tmp_path):
    settings = CellSettings(block_voxels=40_000, block_halo=8)
    with pytest.raises(UnetslError, match="does not track cells over time yet; add "
                                          "--no-tracking"):
        segment_file(stack_file / "movie.tif", tmp_path / "c.tif", settings=settings)
    with pytest.raises(UnetslError, match="does not write --table yet"):
        segment_file(stack_file / "prob.tif", tmp_path / "c.tif", settings=settings,
                     table=tmp_path / "c.csv")
    assert list(tmp_path.iterdir()) == []
    untracked = segment_file(stack_file / "movie.tif", tmp_path / "c.tif", settings=settings,
                             tracking=False)
    assert untracked.frames == 2 and untracked.count > 0


def test_segment_cells_command_block_by_block(stack_file, tmp_path, run_script):
    result = run_script("segment_cells", str(stack_file / "prob.tif"), "cells.ome.zarr",
                        "-D", "cell block voxels=40000", "-D", "cell block halo=8", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "16 blocks of" in result.stderr and "wrote cells.ome.zarr" in result.stdout
    assert open_image(tmp_path / "cells.ome.zarr").shape == (1, 1, 16, 96, 96)


def test_a_budget_too_small_for_the_halo_is_one_line(stack_file, tmp_path,
                                                     assert_one_line_error, run_script):
    with pytest.raises(UnetslError, match='too small for a halo of 16 pixels .8x16x16 voxels.'):
        plan_blocks((16, 96, 96), SPACING, CellSettings(block_voxels=40_000))
    result = run_script("segment_cells", str(stack_file / "prob.tif"), "c.tif",
                        "-D", "cell block voxels=40000", cwd=tmp_path)
    assert_one_line_error(result, '"cell block voxels" 40000', '"cell block halo"')
    assert not (tmp_path / "c.tif").exists()


def test_dask_workers_segment_the_blocks_as_one_process_does(stack_file, tmp_path, run_script):
    """segment_cells --dask local:2: worker processes open the file and write the blocks'
    labels to the scratch folder beside the output; the labels equal the local run's."""
    settings = ("-D", "cell block voxels=60000", "-D", "cell block halo=12")
    local = run_script("segment_cells", str(stack_file / "prob.tif"), "local.tif", *settings,
                       cwd=tmp_path)
    assert local.returncode == 0, local.stderr
    spread = run_script("segment_cells", str(stack_file / "prob.tif"), "dask.ome.zarr",
                        *settings, "--dask", "local:2", cwd=tmp_path)
    assert spread.returncode == 0, spread.stderr
    assert "on Dask" in spread.stderr
    assert [line for line in spread.stderr.splitlines() if not line.startswith("info: ")] == []
    whole = (slice(None),) * 3
    np.testing.assert_array_equal(open_image(tmp_path / "dask.ome.zarr").data.read(0, *whole),
                                  open_image(tmp_path / "local.tif").data.read(0, *whole))
    assert not list(tmp_path.glob(".unetsl-cells-*"))


def test_a_wide_frame_gets_a_label_pyramid(tmp_path):
    """OME-Zarr labels of a frame wider than 1024 px get a lower level, as napari wants for a
    large volume (nearest neighbour: ids stay ids)."""
    from unetsl.cells.block_files import pyramid_levels

    assert [pyramid_levels((1, 512, n)) for n in (1024, 1025, 2048, 4097)] == [1, 2, 2, 4]
    frame = synthetic.epithelium_time_series((1, 160, 1100), seed=1)
    membrane = ndi.gaussian_filter((frame.labels[0] & 1).astype(np.float32), 1.0)
    write_image(tmp_path / "wide.tif", (membrane / membrane.max())[None, None, None])
    segment_file(tmp_path / "wide.tif", tmp_path / "cells.ome.zarr", tracking=False,
                 settings=CellSettings(block_voxels=60_000))
    full = omezarr.open_zarr(tmp_path / "cells.ome.zarr")
    half = omezarr.open_zarr(tmp_path / "cells.ome.zarr", level=1)
    assert full.levels == 2 and half.data.shape[-2:] == (80, 550)
    ids = set(np.unique(full.data[:]).tolist())
    assert set(np.unique(half.data[:]).tolist()) <= ids and len(ids) > 100
