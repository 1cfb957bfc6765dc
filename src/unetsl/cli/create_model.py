"""create_model: write the JSON config and the untrained model beside it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from unetsl.cli.common import batch_option, define_option, interactive, one_line_errors
from unetsl.cli.tui import edit_values
from unetsl.config.cerberus_layout import CerberusConfig, CerberusTraining, is_cerberus_file
from unetsl.config.model_config import Config
from unetsl.errors import UnetslError

if TYPE_CHECKING:
    from unetsl.config.cerberus_layout import CerberusConfig


def _validate_edit(path: Path):
    def validate(values: dict) -> None:
        Config(values, path=path).validate()

    return validate


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config-file", "config_file", type=click.Path(),
              prompt="Config file", help="Model config NAME.json; the model is written as NAME.h5.")
@define_option
@batch_option
@one_line_errors
def main(config_file: str, overrides: tuple[str, ...], batch: bool) -> None:
    """Create (or update) NAME.json and build the untrained U-Net NAME.h5.

    Starts from the defaults, or from NAME.json when it exists (backed up first as
    NAME-json.bak). -D values are applied before the editor opens and are saved.
    """
    path = Path(config_file)
    if not path.parent.is_dir():
        raise UnetslError(f"{path}: folder {path.parent} does not exist")

    if is_cerberus_file(path):
        create_cerberus(path, overrides, batch)
        return
    config = Config.load(path, must_exist=False)
    config.apply_overrides(overrides)
    if interactive(batch):

        edited = edit_values(config.as_dict(), title=f"Update config: {path}",
                             validate=_validate_edit(path))
        if edited is None:
            click.echo("cancelling...")
            return
        config = Config(edited, path=path)
    _create(config, write_config=True)


def _create(config: Config, *, write_config: bool) -> None:
    """The library's create path (check, build, back up, write), then what was written."""
    from unetsl.nets.model_files import create_model_files, describe_model

    model = create_model_files(config, write_config=write_config)
    click.echo(f"config: {config.path}")
    click.echo(f"model:  {config.model_path}")
    click.echo(describe_model(model))


def create_cerberus(path: Path, overrides: tuple[str, ...], batch: bool,
                     config: CerberusConfig | None = None) -> None:
    """A cerberus (multi-head) config: editors for the unet section, then each head, as
    the original's ``cerberus create``; writes NAME.h5 (and NAME.json when changed).

    ``config`` is the starting config when it is not read from ``path``: ``cerberus create``
    passes the defaults for a new file, which is then always written.
    """

    config = CerberusConfig.load(path) if config is None else config
    config.apply_overrides(overrides)
    changed = bool(overrides) or not path.exists()
    if interactive(batch):

        data = config.data
        edited = edit_values(config.unet, title=f"configure base unet: {path}",
                             finish_label="next",
                             validate=lambda v: CerberusConfig({**data, "unet": v}, path))
        if edited is None:
            click.echo("cancelled")
            return
        data = {**data, "unet": edited}
        heads = []
        for i, head in enumerate(config.heads):
            values = edit_values(head.as_dict(), title=f"configure head #{i}")
            if values is None:
                click.echo("cancelled")
                return
            heads.append(values)
        config = CerberusConfig({**data, "heads": heads}, path)
        changed = True

    _create(CerberusTraining(config), write_config=changed)


if __name__ == "__main__":
    main()
