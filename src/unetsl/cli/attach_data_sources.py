"""attach_data_sources: add, list and remove the training data sources of a config.

Without action flags it opens the original's menu (urwid); the flags do the same from a
script or a Slurm job.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from unetsl.cli.attach_menu import run_menu
from unetsl.cli.common import batch_option, interactive, one_line_errors
from unetsl.config.model_config import Config, parse_overrides
from unetsl.data.attach import (
    AttachDialogue,
    add_source,
    model_channels,
    remove_sources,
    source_lines,
)
from unetsl.data.sources import (
    FILES,
    PAIRED,
    SOURCE_SETTINGS,
    WEIGHTED,
    make_entry,
    parse_angles,
    stored_path,
)
from unetsl.errors import UnetslError

EXAMPLES = """\b
Examples:
  attach_data_sources -c model.json                  # the menu
  attach_data_sources -c model.json --paired images labels --labeller multiclass
  attach_data_sources -c model.json --paired images labels --labeller 1 --angles 0,45
  attach_data_sources -c model.json --weighted images labels weights --labeller multiclass
  attach_data_sources -c model.json --files img.tif label.tif --labeller linear
  attach_data_sources -c model.json --list
  attach_data_sources -c model.json --remove 1
"""


@click.command(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXAMPLES)
@click.option("-c", "--config-file", "config_file", required=True,
              type=click.Path(), help="Model config NAME.json (must exist).")
@click.option("--paired", nargs=2, metavar="IMAGES LABELS", default=None,
              help="Add a paired directories source.")
@click.option("--weighted", nargs=3, metavar="IMAGES LABELS WEIGHTS", default=None,
              help="Add a weighted directories source (weights multiply the loss).")
@click.option("--files", nargs=2, metavar="IMAGE LABEL", default=None,
              help="Add a single image / label file pair.")
@click.option("--labeller", metavar="NAME",
              help="Labeller of the new source: name, short name or menu number "
                   "(0 region, 1 multiclass, 2 categorical, 3 double membrane, 4 linear).")
@click.option("--angles", default="", metavar="A,B,...",
              help="Rotation angles in degrees for the new source (each adds a rotated copy).")
@click.option("-S", "--source-setting", "settings", multiple=True, metavar='"key=json"',
              help='Per-source value of a sampling key, e.g. -S \'sampling="foreground"\'.')
@click.option("--list", "list_", is_flag=True, help="List the data sources.")
@click.option("--remove", type=int, multiple=True, metavar="N",
              help="Remove data source N (repeatable; numbers as --list shows them).")
@batch_option
@one_line_errors(tensorflow=False)
def main(config_file: str, paired, weighted, files, labeller, angles, settings, list_,
         remove, batch) -> None:
    """Add, list or remove the training data sources of NAME.json.

    Without action flags the menu of the original opens. Paths are stored relative to
    the config's folder when they are inside it (the project can be moved), else absolute.
    Rotation angles are degrees.
    """

    path = Path(config_file)
    if not path.exists():
        raise UnetslError(f"{path}: config file does not exist; create it with "
                          f"create_model -c {path}")
    cfg = Config.load(path)
    entries = list(cfg["data sources"])
    adding = [(kind, paths) for kind, paths in ((PAIRED, paired), (WEIGHTED, weighted),
                                                 (FILES, files)) if paths]
    if (labeller or angles or settings) and not adding:
        raise UnetslError("--labeller, --angles and -S describe a new source: add "
                          "--paired, --weighted or --files")
    if not (adding or remove or list_):
        if not interactive(batch):
            raise UnetslError("no terminal for the menu: use --paired, --weighted, --files, "
                              "--remove or --list (see attach_data_sources --help)")

        dialogue = AttachDialogue(entries, cfg.folder, n_labels=model_channels(cfg))
        if run_menu(dialogue, title=f"attach data sources: {path}"):
            cfg["data sources"] = dialogue.entries
            cfg.save(backup=True)  # the old file stays as NAME-json.bak
            click.echo(f"saved {len(dialogue.entries)} data source(s) to {path}")
        else:
            click.echo("not saved")
        return
    if len(adding) > 1:
        raise UnetslError("give one of --paired, --weighted, --files at a time")
    indexes = sorted(set(remove))
    for index, entry in zip(indexes, remove_sources(entries, indexes), strict=True):
        click.echo(f"removed {index}. {json.dumps(entry)}")
    if adding:
        kind, typed = adding[0]
        if not labeller:
            raise UnetslError("--labeller is required to add a source (e.g. --labeller "
                              "multiclass)")
        own = parse_overrides(settings)
        unknown = [k for k in own if k not in SOURCE_SETTINGS]
        if unknown:
            raise UnetslError(f"-S {unknown[0]!r}: a source can set only "
                              f"{', '.join(SOURCE_SETTINGS)}")
        stored = [stored_path(p, cfg.folder) for p in typed]
        entry = make_entry(kind, stored, labeller, parse_angles(angles), own)
        n_pairs = add_source(entries, entry, cfg.folder, n_labels=model_channels(cfg))
        click.echo(f"added source {len(entries) - 1} ({n_pairs} image pair(s)): "
                   f"{json.dumps(entry)}")
    if adding or remove:
        cfg["data sources"] = entries
        cfg.save(backup=True)
    if list_:
        for line in source_lines(entries) or ["no data sources"]:
            click.echo(line)


if __name__ == "__main__":
    main()
