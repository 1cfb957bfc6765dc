"""export_model: write a trained model as a bioimage.io model package (zip)."""

from __future__ import annotations

import sys

import click

from unetsl.cli.common import one_line_errors
from unetsl.errors import UnetslError
from unetsl.export.bioimageio import export_bioimageio
from unetsl.export.quiet import quiet_third_party
from unetsl.export.validation import validate_package


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model_file", type=click.Path())
@click.argument("output", type=click.Path())
@click.option("--bioimageio", is_flag=True, help="Write a BioImage Model Zoo package (rdf.yaml "
              "+ weights + test tensors), for deepImageJ, ilastik, napari and bioimage.io.")
@click.option("--sample", type=click.Path(),
              help="Image whose central patch becomes the test input; its pixel size and unit "
                   "describe the axes.")
@click.option("-c", "--config-file", "config_file", type=click.Path(),
              help="The model's JSON config, for its pre-processing (default: NAME.json beside "
                   "the model, -best/-latest stripped).")
@click.option("--name", help="Model name shown by bioimage.io (default: unetsl <model>).")
@click.option("--description", help="One or two sentences on what the model segments.")
@click.option("--author", "authors", multiple=True, help="Author name (repeatable).")
@click.option("--github-user", help="GitHub user of the first author (the package's maintainer).")
@click.option("--license", "license_", default="CC-BY-4.0", show_default=True,
              help="SPDX license of the weights.")
@click.option("--weights", "weights", default="keras_v3,keras_hdf5,tensorflow_saved_model_bundle",
              show_default=True, help="Comma-separated weight formats; the first is the source.")
@click.option("--tag", "tags", multiple=True, help="Extra tag (repeatable), e.g. epithelium.")
@click.option("--no-validate", is_flag=True,
              help="Skip the final check of the written package with bioimageio.spec.")
@click.option("-v", "--verbose", is_flag=True,
              help="Show what Keras, TensorFlow and bioimageio print (progress bars, "
                   "retracing and log lines); hidden by default.")
@one_line_errors
def main(model_file: str, output: str, bioimageio: bool, sample: str | None,
         config_file: str | None, name: str | None, description: str | None,
         authors: tuple[str, ...], github_user: str | None, license_: str, weights: str,
         tags: tuple[str, ...], no_validate: bool, verbose: bool) -> None:
    """Export MODEL_FILE (.h5 or .keras, also a model of the original) to OUTPUT.zip."""

    if not bioimageio:
        raise UnetslError("choose an export format: --bioimageio (the only one so far)")
    with quiet_third_party(verbose) as caught:
        result = export_bioimageio(
            model_file, output, sample=sample, config=config_file, name=name,
            description=description, authors=authors, github_user=github_user,
            license=license_, weight_formats=[w.strip() for w in weights.split(",")
                                              if w.strip()], tags=tags)
    _warn(caught)
    for note in result.notes:
        click.echo(f"note: {note}")
    click.echo(f"wrote {result.path}: {', '.join(result.files)}")
    if no_validate:
        return
    try:
        with quiet_third_party(verbose) as caught:
            status, tool, messages = validate_package(result.path)
    except UnetslError as err:
        click.echo(f"not validated: {err}")
        return
    _warn(caught)
    for message in messages:
        click.echo(f"  {message}")
    click.echo(f"bioimage.io validation ({tool}): {status}")
    if status == "failed":
        sys.exit(1)


def _warn(lines: list[str]) -> None:
    """Python warnings raised by the libraries, as unetsl's one-line warnings."""
    for line in lines:
        click.echo(f"warning: {line}", err=True)


if __name__ == "__main__":
    main()
