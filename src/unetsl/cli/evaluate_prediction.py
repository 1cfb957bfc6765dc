"""evaluate_prediction: score a predicted label image against the true labels."""

from __future__ import annotations

import json

import click

from unetsl.atomic import atomic_write_text
from unetsl.cli.common import one_line_errors
from unetsl.evaluate.instances import evaluate_instance_files, instance_table
from unetsl.evaluate.overlay import cells_png, overlay_png
from unetsl.evaluate.scores import evaluate_files, write_json
from unetsl.io.tiff import read_image

CELL_METHODS = ("components", "watershed", "none")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("prediction", type=click.Path())
@click.argument("truth", type=click.Path())
@click.option("--labeller", default="multiclass", show_default=True,
              help="Labeller the model was trained with: multiclass, categorical, "
                   "double membrane, region, linear (name or menu number).")
@click.option("--n-labels", type=click.IntRange(min=1), default=None,
              help="Labels to score (default: from the largest value in the images; "
                   "--n-labels 1 scores the membrane bit only).")
@click.option("--tolerance", type=click.FloatRange(min=0), default=1.0, show_default=True,
              metavar="PX", help="Skeleton labels: a pixel this close (y-x plane) counts as "
                                 "correct; 0 = exact scores only.")
@click.option("--cells", type=click.Choice(CELL_METHODS), default="components",
              show_default=True,
              help="Cells for the instance scores: connected non-membrane regions, the same "
                   "grown over the membrane by watershed, or none.")
@click.option("--min-cell-size", type=click.IntRange(min=0), default=0, show_default=True,
              metavar="PX", help="Regions smaller than this are not cells (with --instances: "
                                 "left out of both images, e.g. slivers at the border).")
@click.option("--iou-threshold", type=click.FloatRange(0, 1, max_open=True), default=0.5,
              show_default=True, help="Cells match when their IoU is above this.")
@click.option("--json", "json_file", type=click.Path(), metavar="OUT.json",
              help="Also write the scores as JSON.")
@click.option("--overlay", "overlay_file", type=click.Path(), metavar="OUT.png",
              help="Also draw the middle plane of --image with the prediction and the truth.")
@click.option("--image", "image_file", type=click.Path(),
              help="The image that was predicted (for --overlay).")
@click.option("--instances", is_flag=True,
              help="PREDICTION is a cell label image (segment_cells' output): score cell "
                   "instances (F1, AP, adapted Rand error, VOI, identity kept over time) "
                   "against TRUTH's cell ids (or the cells its membrane labels enclose).")
@one_line_errors(tensorflow=False)
def main(prediction: str, truth: str, labeller: str, n_labels: int | None, tolerance: float,
         cells: str, min_cell_size: int, iou_threshold: float, json_file: str | None,
         overlay_file: str | None, image_file: str | None, instances: bool) -> None:
    """Score PREDICTION (a label image from predict_image) against TRUTH (the true labels).

    Prints per label IoU, Dice/F1, precision and recall, the same within --tolerance pixels
    for skeleton labels (membranes), and cell-instance precision, recall, F1 and mean IoU
    of the cells matched at IoU > 0.5. Both images must have the same shape.
    """
    if overlay_file and not image_file:
        raise click.UsageError("--overlay needs --image (the image that was predicted)")
    if instances:
        _instances(prediction, truth, json_file, overlay_file, image_file, min_cell_size)
        return

    result = evaluate_files(prediction, truth, labeller=labeller, n_labels=n_labels,
                            tolerance=tolerance, cells=None if cells == "none" else cells,
                            min_cell_size=min_cell_size, iou_threshold=iou_threshold)
    click.echo(result.table())
    if json_file:
        write_json(result, json_file)
        click.echo(f"wrote {json_file}")
    if overlay_file:

        overlay_png(overlay_file, read_image(image_file).data, read_image(prediction).data,
                    read_image(truth).data)
        click.echo(f"wrote {overlay_file}")


def _instances(prediction: str, truth: str, json_file: str | None, overlay_file: str | None,
               image_file: str | None, min_size: int) -> None:


    scores = evaluate_instance_files(prediction, truth, min_size=min_size)
    click.echo(instance_table(scores))
    if json_file:
        atomic_write_text(json_file, json.dumps(scores, indent=2) + "\n")
        click.echo(f"wrote {json_file}")
    if overlay_file:

        cells_png(overlay_file, read_image(image_file).data, read_image(prediction).data)
        click.echo(f"wrote {overlay_file}")


if __name__ == "__main__":
    main()
