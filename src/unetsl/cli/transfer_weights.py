"""transfer_weights: copy trained weights from one model file into another."""

from __future__ import annotations

from pathlib import Path

import click

from unetsl.cli.common import one_line_errors


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("origin", type=click.Path())
@click.argument("target", type=click.Path())
@click.argument("output", required=False, default="transferred.h5",
                type=click.Path())
@click.option("-i", "--inverted", is_flag=True,
              help="Copy from TARGET into ORIGIN instead (and write ORIGIN's structure).")
@click.option("-q", "--quiet", is_flag=True, help="Do not list the layers of both models.")
@one_line_errors
def main(origin: str, target: str, output: str, inverted: bool, quiet: bool) -> None:
    """Copy the weights of ORIGIN into TARGET and write the result to OUTPUT.

    Layers are matched by name first (same name, same weight shapes), then in order among
    the remaining layers with weights. Every copy and skip is listed. OUTPUT defaults to
    transferred.h5; .keras works too. Models of the original (Keras 2) load as they are.
    """
    from unetsl.nets.model_files import load_model, save_model
    from unetsl.nets.transfer import describe_layers, transfer_weights

    source_path, target_path = (target, origin) if inverted else (origin, target)
    source = load_model(source_path)
    click.echo(f"load {source_path} with {len(source.layers)} layers")
    destination = load_model(target_path)
    click.echo(f"load {target_path} with {len(destination.layers)} layers")
    if not quiet:
        for line in describe_layers(source):
            click.echo(line)
        click.echo("")
        for line in describe_layers(destination):
            click.echo(line)
        click.echo("")
    report = transfer_weights(source, destination, origin_name=source_path,
                              target_name=target_path)
    for line in report.lines():
        click.echo(line)
    save_model(destination, Path(output))
    click.echo(f"{len(report.copies)} layer(s) copied, {len(report.skipped)} skipped; "
               f"wrote {output}")


if __name__ == "__main__":
    main()
