"""cerberus: the original's command group for multi-head models, kept so that its users'
command lines and Slurm scripts still work.

Each subcommand is an existing unetsl command under the original's name, so there is one
implementation of each step:

    cerberus create  -> create_model -c (a missing file starts from the default heads)
    cerberus attach  -> attach_data_sources
    cerberus inspect -> inspect_data_sources
    cerberus train   -> train_model
    cerberus predict -> predict_image -m (every head), then "finished cerberus prediction!"

Subcommands chain as in the original: ``cerberus create -c m.json -b train -c m.json -b``.
"""

from __future__ import annotations

from pathlib import Path

import click

from unetsl.cli import (
    attach_data_sources,
    create_model,
    inspect_data_sources,
    predict_image,
    train_model,
)
from unetsl.cli.common import (
    batch_option,
    define_option,
    import_tensorflow_quietly,
    one_line_errors,
)
from unetsl.config.cerberus_layout import CerberusConfig
from unetsl.errors import UnetslError

HELP = {"help_option_names": ["-h", "--help"]}

EXAMPLES = """\b
Examples:
  cerberus create -c cerberus.json -b -D "n filters=8"
  cerberus attach -c cerberus.json --paired images labels-packed --labeller linear
  cerberus train -c cerberus.json -b -D epochs=40
  cerberus predict cerberus-best.h5 image.tif -b
  cerberus create -c c.json -b attach -c c.json --paired images labels --labeller linear \\
      train -c c.json -b
"""


class _InOrder(click.Group):
    """Lists the subcommands in workflow order (create .. predict), not alphabetically."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


@click.group(cls=_InOrder, chain=True, context_settings=HELP, epilog=EXAMPLES)
def main() -> None:
    """Multi-head (cerberus) models: create, attach, inspect, train, predict.

    The original's command group; each subcommand is the unetsl command named in its help,
    with the same options, and several can follow one another on one command line.
    """


@main.command("create", context_settings=HELP)
@click.option("-c", "--config-file", "config_file", type=click.Path(),
              prompt="Config file",
              help="Cerberus config NAME.json (created with the default heads when missing); "
                   "the model is written as NAME.h5.")
@define_option
@batch_option
@one_line_errors(tensorflow=False)  # a bad file is reported before TensorFlow starts
def create(config_file: str, overrides: tuple[str, ...], batch: bool) -> None:
    """Create NAME.h5 from a cerberus config, as create_model -c.

    Unlike create_model, a missing NAME.json starts from the original's cerberus defaults
    (three heads: distance, membrane-scale, membrane-crop) instead of a plain U-Net, and a
    plain (non-cerberus) config is refused.
    """

    path = Path(config_file)
    if not path.parent.is_dir():
        raise UnetslError(f"{path}: folder {path.parent} does not exist")
    config = CerberusConfig.load(path) if path.exists() else CerberusConfig.default(path)
    import_tensorflow_quietly()
    create_model.create_cerberus(path, overrides, batch, config=config)


main.add_command(attach_data_sources.main, "attach")
main.add_command(inspect_data_sources.main, "inspect")
main.add_command(train_model.main, "train")


class _Predict(click.Command):
    """A chained group parses options only before a subcommand's arguments, so
    ``predict MODEL IMAGE -b`` would take -b as OUTPUT; when no other subcommand follows,
    options may come after the arguments, as the original's usage line shows them."""

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: object) -> click.Context:
        group = parent.command if parent is not None else None
        if isinstance(group, click.Group) and not any(a in group.commands for a in args):
            extra["allow_interspersed_args"] = True
        return super().make_context(info_name, args, parent=parent, **extra)


def _predict_all_heads(**kwargs: object) -> None:
    """predict_image with -m forced: one output file per head, as the original."""
    written = predict_image.main.callback(all_outputs=True, **kwargs)
    if written is not None:  # None: the editor was cancelled
        click.echo("finished cerberus prediction!")


main.add_command(_Predict(
    "predict", context_settings=HELP, callback=_predict_all_heads,
    params=[p for p in predict_image.main.params if p.name != "all_outputs"],
    help="Predict IMAGE_FILE with every head of MODEL_FILE, as predict_image -m: one file "
         "per head, <output>-<head name>.tif (-D 'output index=N' picks one head).",
    short_help="Predict an image with every head, as predict_image -m."))


if __name__ == "__main__":
    main()
