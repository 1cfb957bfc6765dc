"""predict_image: tiled prediction of one image with a trained model."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import click
from tqdm import tqdm

from unetsl.atomic import check_writable
from unetsl.cli.common import (
    batch_option,
    define_option,
    gpus_option,
    interactive,
    one_line_errors,
)
from unetsl.cli.segment_cells import cell_settings, run_cells
from unetsl.cli.tui import edit_values
from unetsl.errors import UnetslError
from unetsl.predict.dask_cluster import parse_scheduler
from unetsl.predict.job import PredictionJob


class Progress:
    """predict_image's progress: on a terminal one tqdm bar over the tiles of the job, with
    unetsl's log lines printed above it (never into it) and the bar closed when the last tile
    is done; otherwise (Slurm logs, pipes) one line per finished time point."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.bar: Any = None
        self.frames_done = 0
        self.tiles_at_frame = 0
        self.frame_start = time.perf_counter()
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._handlers: list[tuple[logging.StreamHandler, Any]] = []
        self._finished = False

    def __call__(self, done: int, total: int, frames_done: int, frames: int) -> None:
        if done == 0:  # the engine starts: time the first frame from here, not from loading
            self.frame_start = time.perf_counter()
        if self.tty:
            self._bar_update(done, total, frames_done, frames)
            return
        if frames_done > self.frames_done:
            first, self.frames_done = self.frames_done + 1, frames_done
            now = time.perf_counter()
            which = (f"time point {frames_done}/{frames}" if first == frames_done
                     else f"time points {first}-{frames_done}/{frames}")
            tiles = done - self.tiles_at_frame  # 0: finished by the tiles counted before
            took = f"{tiles} tiles in {now - self.frame_start:.1f} s" if tiles else "done"
            click.echo(f"{which}: {took} ({done}/{total} tiles)", file=self.stream)
            self.tiles_at_frame, self.frame_start = done, now

    def _bar_update(self, done: int, total: int, frames_done: int, frames: int) -> None:
        if self._finished:
            return
        if self.bar is None:

            self.bar = tqdm(total=total, unit="tile", file=self.stream, leave=True,
                            dynamic_ncols=True)
            self._redirect_log_lines(tqdm)
        self.bar.update(done - self.bar.n)
        self.bar.set_postfix_str(f"time point {min(frames_done + 1, frames)}/{frames}",
                                 refresh=False)
        if done >= total and frames_done >= frames:
            self.bar.set_postfix_str(f"{frames} time point{'s' * (frames != 1)}")
            self._finished = True
            self.close()  # what is logged next goes below the finished bar

    def _redirect_log_lines(self, tqdm: Any) -> None:
        """Let unetsl's log handlers on this stream write through ``tqdm.write``, which
        clears the bar, prints the line and redraws the bar below it."""
        stream = self.stream

        class AboveBar:
            def write(self, text: str) -> None:
                tqdm.write(text, file=stream, end="")

            def flush(self) -> None:
                stream.flush()

        for handler in logging.getLogger("unetsl").handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is stream:
                self._handlers.append((handler, handler.setStream(AboveBar())))

    def close(self) -> None:
        for handler, stream in self._handlers:
            handler.setStream(stream)
        self._handlers = []
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model_file", type=click.Path())
@click.argument("image_file", type=click.Path())
@click.argument("output_file", required=False, type=click.Path())
@define_option
@batch_option
@gpus_option
@click.option("-m", "--all-outputs", is_flag=True,
              help="Predict every output of a multi-output (cascade) model, one file each "
                   '(same as -D \'output index="all"\').')
@click.option("--probabilities", is_flag=True,
              help="Also write the float32 per-channel map as <output>-prob.tif.")
@click.option("--dask", "dask", metavar="SCHEDULER",
              help="Predict blocks on a Dask cluster: local:N (N worker processes here), "
                   "slurm:N (N Slurm jobs via dask-jobqueue), a scheduler address "
                   "(tcp://host:8786) or a scheduler file (scheduler.json).")
@click.option("--levels", type=click.IntRange(min=1), default=1, show_default=True,
              help="Resolution levels of an OME-Zarr output (each halves y and x).")
@click.option("--cells", is_flag=True,
              help="Then segment cells from the probabilities as segment_cells does (implies "
                   '--probabilities): cells-<output>, tracked; cell keys as -D "cell ...".')
@click.option("--table", type=click.Path(), metavar="FILE.csv",
              help="With --cells: write the cell measurements as CSV.")
@one_line_errors
def main(model_file: str, image_file: str, output_file: str | None, overrides: tuple[str, ...],
         batch: bool, gpus: int, all_outputs: bool, probabilities: bool, dask: str | None,
         levels: int, cells: bool, table: str | None) -> list[Path] | None:
    """Predict IMAGE_FILE with MODEL_FILE (.h5 or .keras) and write a label TIFF.

    IMAGE_FILE is a TIFF, a zarr / OME-Zarr folder or a .npy file of any size; it is read
    block by block and the output is written while it is predicted. Settings ("batch
    size", "output index", "reduction type" 0 categorical / 1 multiclass / 2 linear,
    "normalize samples", "overlap") can be changed with -D or, without -b, in the editor.
    The default output is pred-<model>-<image>.tif (.ome.zarr for a zarr image); an
    OUTPUT_FILE ending in .zarr or .ome.zarr is written as OME-Zarr, one ending in .npy as a
    NumPy array (t, c, z, y, x), any other as an ImageJ TIFF.
    """

    overrides, cell_overrides = _split_cell_overrides(overrides)
    if table and not cells:
        raise UnetslError("--table needs --cells (the measurements are of the cells)")
    if cells:

        cell_settings(cell_overrides, None)  # a bad cell key stops here, before predicting
    for name, what in ((model_file, "model file"), (image_file, "image")):
        if not Path(name).exists():
            raise UnetslError(f"{name}: no such {what}")
    if output_file:

        check_writable([output_file])  # before the model loads, not after the last tile
    if dask is not None:

        parse_scheduler(dask)  # a bad value stops here, before the model loads
    job = PredictionJob.create(Path(model_file), Path(image_file),
                               Path(output_file) if output_file else None,
                               all_outputs=all_outputs)
    job.apply_overrides(overrides)
    if interactive(batch):

        edited = edit_values(job.settings(), title=f"predict {image_file}",
                             validate=job.check_settings)
        if edited is None:
            click.echo("cancelling...")
            return None
        job.update(edited)
    progress = Progress()
    try:
        written = job.run(probabilities=probabilities or cells, gpus=gpus, progress=progress,
                          dask=dask, levels=levels).written
    finally:
        progress.close()
    for path in written:
        click.echo(f"wrote {path}")
    written = list(written)
    if cells:

        maps = [p for p in written if Path(p).name.split(".")[0].endswith("-prob")]
        if not maps:
            raise UnetslError("--cells: the prediction wrote no probability map")
        result = run_cells(maps[0], None, mode=None, channel=0, overrides=cell_overrides,
                           min_size=None, table=table, rois=None, meshes=None,
                           mesh_format="ply", no_tracking=False)
        written.extend(result.written)
    return written  # for wrappers (cerberus predict); click ignores it


def _split_cell_overrides(overrides: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """-D values for the prediction and those for --cells (keys that start with "cell")."""
    cell = tuple(o for o in overrides if o.strip().lower().startswith("cell"))
    return tuple(o for o in overrides if o not in cell), cell


if __name__ == "__main__":
    main()
