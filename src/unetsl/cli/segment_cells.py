"""segment_cells: cells from a probability map, tracked over time, measured, exported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from unetsl.cells.files import segment_file
from unetsl.cells.settings import MODES, CellSettings
from unetsl.cli.common import define_option, one_line_errors
from unetsl.config.model_config import parse_overrides
from unetsl.errors import UnetslError
from unetsl.predict.dask_cluster import dask_client, parse_scheduler


def cell_options(func):
    """The options segment_cells and predict_image --cells share."""
    options = [
        click.option("--from", "mode", type=click.Choice(MODES),
                     default=None,
                     help="membrane (default): cells are the regions enclosed by membranes; "
                          'foreground: objects such as nuclei (same as -D \'cell mode='
                          '"foreground"\').'),
        click.option("--channel", type=click.IntRange(min=0), default=0, show_default=True,
                     help="Channel of the membrane (or foreground) probability."),
        click.option("--min-size", type=click.IntRange(min=0), default=None, metavar="N",
                     help='Smallest cell in pixels (voxels in 3D); same as -D "cell min size=N".'),
        click.option("--table", type=click.Path(), metavar="FILE.csv",
                     help="Write the measurements, one row per cell per time point."),
        click.option("--confidence", is_flag=True,
                     help="Add a confidence column to --table (0..1: how clearly the map "
                          "draws the cell); sort by it to review the least certain first."),
        click.option("--rois", type=click.Path(), metavar="FILE.zip",
                     help="Write the cell outlines as an ImageJ ROI set (2D, 2D+time)."),
        click.option("--meshes", type=click.Path(file_okay=False), metavar="DIR",
                     help="Write one mesh per cell (3D stacks), PLY unless --mesh-format."),
        click.option("--mesh-format", type=click.Choice(("ply", "stl", "obj")), default="ply",
                     show_default=True, help="File format of --meshes."),
        click.option("--no-tracking", is_flag=True,
                     help="Do not link cells over time points (every cell of every frame "
                          "gets its own id)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def cell_settings(overrides: tuple[str, ...], min_size: int | None) -> Any:
    """The cell settings from -D "key=value" (cell keys only) and --min-size."""

    values = parse_overrides(overrides)
    if min_size is not None:
        values["cell min size"] = min_size
    return CellSettings.from_overrides(values)


def run_cells(probabilities: str | Path, output: str | None, *, mode: str | None, channel: int,
              overrides: tuple[str, ...], min_size: int | None, table: str | None,
              rois: str | None, meshes: str | None, mesh_format: str, no_tracking: bool,
              dask: str | None = None, confidence: bool = False) -> Any:
    """Segment and report; shared by segment_cells and predict_image --cells."""

    if confidence and not table:
        raise UnetslError("--confidence is a column of the table: give --table FILE.csv too")
    settings = cell_settings(overrides, min_size)
    options = dict(mode=mode, channel=channel, settings=settings, table=table, rois=rois,
                   meshes=meshes, mesh_format=mesh_format, tracking=not no_tracking,
                   confidence=confidence)
    if dask is None:
        result = segment_file(probabilities, output, **options)
    else:
        parse_scheduler(dask)  # a bad value stops here, before a cluster starts
        with dask_client(dask) as client:
            result = segment_file(probabilities, output, client=client, **options)
    tracked = f", {len(result.tracks)} tracks" if result.tracks else ""
    click.echo(f"cells: {result.count} in {result.frames} time point(s){tracked}")
    for path in result.written:
        click.echo(f"wrote {path}")
    return result


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("probabilities", type=click.Path())
@click.argument("output", required=False, type=click.Path())
@cell_options
@click.option("--dask", "dask", metavar="SCHEDULER",
              help="Segment the blocks of frames over \"cell block voxels\" on Dask workers: "
                   "local:N, slurm:N, a scheduler address or file (as predict_image --dask).")
@define_option
@one_line_errors(tensorflow=False)
def main(probabilities: str, output: str | None, mode: str | None, channel: int,
         min_size: int | None, table: str | None, confidence: bool, rois: str | None,
         meshes: str | None, mesh_format: str, no_tracking: bool, dask: str | None,
         overrides: tuple[str, ...]) -> None:
    """Turn PROBABILITIES into cells and write them as a label image (OUTPUT).

    PROBABILITIES is the float map that predict_image --probabilities writes (channel 0 =
    membrane) or any float TIFF / zarr in [0, 1]. A time series is tracked: a cell keeps
    its id from frame to frame, a division ends the parent and starts two daughters, and a
    cell missed for a frame returns as a child id (<output>-res_track.txt, the Cell Tracking
    Challenge format). The default OUTPUT is
    cells-<input>.tif (.ome.zarr for a zarr input: napari opens it as a Labels layer); the
    name chooses the format as for predict_image (.tif, .ome.zarr / .zarr, .npy).
    Settings are -D "key=value" (see the README's cell keys). Frames larger than "cell
    block voxels" (8 M) are segmented block by block in bounded memory (--dask spreads the
    blocks over workers).
    """
    run_cells(probabilities, output, mode=mode, channel=channel, overrides=overrides,
              min_size=min_size, table=table, rois=rois, meshes=meshes,
              mesh_format=mesh_format, no_tracking=no_tracking, dask=dask,
              confidence=confidence)


if __name__ == "__main__":
    main()
