"""train_model: train the model of a config on its data sources."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from unetsl.cli.common import (
    batch_option,
    define_option,
    gpus_option,
    import_tensorflow_quietly,
    interactive,
    one_line_errors,
)
from unetsl.cli.tui import edit_values
from unetsl.config.model_config import Config
from unetsl.training.multiworker import cluster_strategy, in_cluster, is_chief


def _explicit_gpus(gpus: int) -> int | None:
    """--gpus as given, or GPUS from the environment; None when neither was set."""
    ctx = click.get_current_context()
    source = ctx.get_parameter_source("gpus")
    if source is not None and source.name != "DEFAULT":
        return gpus
    if os.environ.get("GPUS", "").strip():
        return gpus
    return None


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config-file", "config_file", type=click.Path(),
              prompt="Config file", help="Model config NAME.json (the model is NAME.h5).")
@define_option
@batch_option
@gpus_option
@click.option("--resume", is_flag=True,
              help="Continue from NAME-latest.h5: next epoch, optimizer state and best value kept.")
@click.option("--from", "start_from", type=click.Path(), metavar="MODEL",
              help="Fine-tune MODEL (any unetsl or original .h5/.keras model): its weights, "
                   "\"fine-tuning learning rate\" and \"fine-tuning steps\"; writes "
                   "NAME-tuned-best.h5 and NAME-tuned-latest.h5.")
@click.option("--data", "data", type=(click.Path(), click.Path()), multiple=True,
              metavar="IMAGES LABELS",
              help="Also train on these images and labels (folders or files) in this run, "
                   "e.g. corrected cells with the rest \"unknown label\"; with the config's "
                   "own data they get half of the training patches. Repeatable.")
@click.option("--correct", "corrections", type=(click.Path(), click.Path(), str),
              multiple=True, metavar="IMAGE CELLS IDS",
              help="Also train on the cells IDS (e.g. 3,17,42) of the label image CELLS that "
                   "you corrected on IMAGE, and -ID for false cells left in CELLS to be "
                   "erased (3,17,-42): partial labels (the rest unknown) written to "
                   "corrections/ beside the config. Repeatable; with --from, correct and "
                   "retrain.")
@click.option("--save-config", is_flag=True,
              help="Also write the -D values into NAME.json (backed up as NAME-json.bak first); "
                   "without it they apply to this run only (and are in its logs).")
@click.option("--allow-growth", is_flag=True, hidden=True,
              help="Accepted for the original's scripts; TensorFlow grows GPU memory anyway.")
@one_line_errors(tensorflow=False)  # TensorFlow starts below, after the cluster is known
def main(config_file: str, overrides: tuple[str, ...], batch: bool, gpus: int, resume: bool,
         start_from: str | None, data: tuple[tuple[str, str], ...],
         corrections: tuple[tuple[str, str, str], ...], save_config: bool,
         allow_growth: bool) -> None:
    """Train NAME.h5 on the data sources of NAME.json.

    Writes NAME-latest.h5 every epoch, NAME-best.h5 when the monitored loss improves, the
    epoch and batch logs training-log_NAME-<id>.txt / batch-log_NAME-<id>.txt, the config
    snapshot training-log_NAME-<id>.json and NAME-curves.png. Ctrl-C or SIGTERM saves
    NAME-latest.h5 and stops; --resume continues from it. -D values apply to this run (the
    epoch log and the snapshot record them); --save-config also writes them into NAME.json.
    Without -b the settings editor opens first; its finish button saves NAME.json. Every
    write of NAME.json backs the old one up as NAME-json.bak.

    --from MODEL fine-tunes MODEL (e.g. on corrected cells given with --data, their other
    pixels set to "unknown label"): a tenth of the learning rate for "fine-tuning steps"
    (300), written to NAME-tuned-best.h5 / NAME-tuned-latest.h5.
    A cerberus (multi-head) config trains every head on its bits of the label image;
    its "training" section is written into NAME.json when missing.
    """

    # under srun with several tasks, or TF_CONFIG: one worker of a multi-worker training;
    # TensorFlow needs that strategy before anything else starts it
    strategy = cluster_strategy() if in_cluster() else None
    import_tensorflow_quietly()
    from unetsl.training.fine_tune import with_added_data, with_corrections
    from unetsl.training.setup import check_training_config
    from unetsl.training.train import train

    chief = is_chief(strategy)
    if strategy is not None:
        batch = True  # workers cannot share an editor
    path = Path(config_file)
    config = Config.load(path)  # a cerberus file gives its CerberusTraining view
    # the original's "cerberus train" wrote the training section (defaults) into the file
    to_save = config if config.unsaved_sections else None
    if overrides:
        config = Config.load(path)  # the run's copy: -D values stay out of the file ...
        config.apply_overrides(overrides)
        if save_config:  # ... unless asked
            to_save = config
    if interactive(batch):

        current = config

        def validate(values: dict) -> None:
            check_training_config(current.with_edited(values))

        section = config.edit_section
        title = f"train {path}" + (f" ({section})" if section else "")
        edited = edit_values(config.edit_values(), title=title, validate=validate)
        if edited is None:
            click.echo("cancelling...")
            return
        config = config.with_edited(edited)
        to_save = config
    check_training_config(config)  # before saving: a bad -D value never reaches the file
    if to_save is not None and chief:
        to_save.save(path, backup=True)

    notes = [f'-D "{text}"' + ("" if to_save is config else " (this run only)")
             for text in overrides]
    config = with_corrections(with_added_data(config, data), corrections)  # never saved
    notes += [f"--from {start_from}"] * (start_from is not None)
    notes += [f"--data {images} {labels}" for images, labels in data]
    notes += [f"--correct {image} {cells} {ids}" for image, cells, ids in corrections]
    result = train(config, resume=resume, gpus=_explicit_gpus(gpus), strategy=strategy,
                   notes=notes, start_from=start_from)
    if not chief:
        return
    if result.interrupted is not None:
        again = f" --from {start_from}" if start_from is not None else ""
        again += "".join(f" --data {images} {labels}" for images, labels in data)
        again += "".join(f" --correct {image} {cells} {ids}" for image, cells, ids in corrections)
        click.echo(f"interrupted after {result.epochs_done} epoch(s); saved "
                   f"{result.paths.latest}; continue with: train_model -c {config_file}"
                   f"{again} --resume -b", err=True)
        sys.exit(128 + int(result.interrupted))
    if result.best is not None:
        # counted from 1, as the epoch lines and Keras' bar count (the logs count from 0)
        click.echo(f"best {result.monitor} {result.best:.6g} at epoch {result.best_epoch + 1}: "
                   f"{result.paths.best}")
    click.echo(f"trained {result.epochs_done}/{result.epochs} epochs: {result.paths.latest}")
    if result.curves is not None:
        click.echo(f"curves: {result.curves}")


if __name__ == "__main__":
    main()
