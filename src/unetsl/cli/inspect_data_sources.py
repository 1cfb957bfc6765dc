"""inspect_data_sources: look at training patches, their labels and targets, source by source."""

from __future__ import annotations

from pathlib import Path

import click

from unetsl.cli.common import define_option, one_line_errors
from unetsl.config.model_config import Config
from unetsl.errors import UnetslError


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config-file", "config_file", required=True,
              type=click.Path(), help="Model config NAME.json.")
@click.option("--save", "save", type=click.Path(), default=None,
              help="Write the view to this PNG instead of opening a window (no display needed).")
@click.option("--source", "sources", type=int, multiple=True, metavar="N",
              help="Only data source N (repeatable; default: every source).")
@click.option("--patches", type=click.IntRange(1, 50), default=3, show_default=True,
              help="Patches (rows) per source.")
@click.option("--slice", "z", type=int, default=None,
              help="z slice of the patches to show (default: the middle one).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the sampling and augmentation shown.")
@define_option
@one_line_errors
def main(config_file: str, save: str | None, sources: tuple[int, ...], patches: int,
         z: int | None, seed: int, overrides: tuple[str, ...]) -> None:
    """Show input, label and target channels of training patches of NAME.json's sources.

    Patches are sampled as in training (stride, sampling, rotations, augmentation), with
    the patch shape of NAME.h5 when it exists, else the config's "input shape". The
    window pages with the arrow keys (left/right: patches, up/down: sources) and has a
    slider over z. --save renders the same view to a file, for clusters and reports.

    A cerberus config (with "unet" and "heads") shows each head's target channels as
    training makes them from the raw label bits, at the head's own resolution.
    """
    from unetsl.data.inspect import build_pages, save_figure, show
    from unetsl.training.setup import training_shapes

    cfg = Config.load(Path(config_file))
    cfg.apply_overrides(overrides)
    patch_shape, n_labels = training_shapes(cfg)
    depth = int(patch_shape[1])
    if z is not None and not 0 <= z < depth:  # before any data is read
        raise UnetslError(f"--slice {z}: the patches of {config_file} have {depth} slice(s), "
                          f"0 to {depth - 1}")
    n_sources = len(cfg["data sources"])
    for index in sources:
        if not 0 <= index < n_sources:
            raise UnetslError(f"--source {index}: {config_file} has {n_sources} data source(s)")
    if save is None:
        import matplotlib

        if matplotlib.get_backend().lower() in ("agg", "pdf", "svg", "ps", "cairo"):
            raise UnetslError("no display for a window; use --save out.png")
    pages = build_pages(cfg, patch_shape=patch_shape, n_labels=n_labels, seed=seed,
                        sources=list(sources) or None)
    if save is not None:
        save_figure(pages, save, patches=patches, z=z)
        click.echo(f"wrote {save}")
    else:
        show(pages, patches=patches, z=z)


if __name__ == "__main__":
    main()
