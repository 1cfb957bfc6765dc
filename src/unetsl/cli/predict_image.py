"""predict_image: tiled prediction of one image with a trained model."""

from __future__ import annotations

from pathlib import Path

import click

from unetsl.cli.common import (
    batch_option,
    define_option,
    gpus_option,
    interactive,
    one_line_errors,
)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model_file", type=click.Path(exists=True, dir_okay=False))
@click.argument("image_file", type=click.Path(exists=True, dir_okay=False))
@click.argument("output_file", required=False, type=click.Path(dir_okay=False))
@define_option
@batch_option
@gpus_option
@click.option("--probabilities", is_flag=True,
              help="Also write the float32 per-channel map as <output>-prob.tif.")
@one_line_errors
def main(model_file: str, image_file: str, output_file: str | None, overrides: tuple[str, ...],
         batch: bool, gpus: int, probabilities: bool) -> None:
    """Predict IMAGE_FILE with MODEL_FILE (.h5 or .keras) and write a label TIFF.

    Settings ("batch size", "output index", "reduction type" 0 categorical / 1 multiclass /
    2 linear, "normalize samples", "overlap") can be changed with -D or, without -b, in
    the editor. The default output is pred-<model>-<image>.tif.
    """
    from unetsl.predict_job import PredictionJob

    job = PredictionJob.create(Path(model_file), Path(image_file),
                               Path(output_file) if output_file else None)
    job.apply_overrides(overrides)
    if interactive(batch):
        from unetsl.cli.tui import edit_values

        edited = edit_values(job.settings(), title=f"predict {image_file}",
                             validate=job.check_settings)
        if edited is None:
            click.echo("cancelling...")
            return
        job.update(edited)
    written = job.run(probabilities=probabilities, gpus=gpus)
    for path in written:
        click.echo(f"wrote {path}")


if __name__ == "__main__":
    main()
