"""Train the regression CNN on split patches: frozen backbone until early stop, then fine-tuning.

Reads a YAML config (every key optional; see histoxai/configs/thesis.yaml), the split manifest written by
`histoxai split` (its train and val rows are used for training, test for the reported R²) and
writes to OUT: model.keras, config.yaml (resolved), history.csv, metrics.json (R² per target on
train/val/test), tensorboard/. OUT/checkpoints/ is rewritten every epoch: run the same command
again after a crash or preemption and training continues after the last finished epoch.

Precision and XLA follow the device unless the config sets them: mixed_float16 + XLA on a GPU,
float32 without XLA on a CPU. Several GPUs train together (MirroredStrategy).

--tensorboard projects/P/locations/L/tensorboards/ID also writes each epoch's scalars to that Vertex AI
TensorBoard instance once training ends: experiment = OUT's folder name, run = the model's kind and
targets (e.g. multitask-md-fa); steps the run already holds are not written again.
Open OUT's local logs with `tensorboard --logdir OUT/tensorboard`.

--reuse DIR publishes the finished training in DIR (e.g. the best trial a study kept in
OUT/best_model/, or a Vizier trial's output folder with --config DIR/config.yaml) instead of
training, when DIR trained exactly this config on the same training and validation patches with the
same code and precision: training it again would repeat it.

Examples:
  histoxai train --config demo --data out/split/split.parquet --targets CC --out out/cc
  histoxai train --config out/tune/best_config.yaml --reuse out/tune/best_model \\
      --data out/split --out out/mdfa
  histoxai train --config thesis --data gs://b/split/split.parquet --targets MD,FA \\
      --out gs://b/models/mdfa --set batch_size=32 --set backbone=DenseNet121
"""

from __future__ import annotations

import argparse

from histoxai.components.train.params import DEFAULTS
from histoxai.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="training config: demo, thesis, a YAML file or gs:// URI "
                                         "(default: the thesis's values)")
    parser.add_argument("--data", required=True,
                        help="split manifest: split.parquet from `histoxai split` or its folder, local or gs://")
    parser.add_argument("--targets", help="comma-separated target columns, e.g. MD,FA or CC "
                                          "(overrides the config's `targets`)")
    parser.add_argument("--out", required=True, help="output folder, local or gs://")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key (value in YAML syntax); repeatable")
    parser.add_argument("--overwrite", action="store_true",
                        help="discard a finished or interrupted training in OUT and start over")
    parser.add_argument("--reuse", metavar="DIR",
                        help="a finished training to publish instead of training, when it trained this "
                             "same config on these patches with this code (e.g. a study's best_model/ "
                             "from `histoxai tune`); otherwise ignored, with the reason printed")
    parser.add_argument("--stop-after-epochs", type=int, metavar="N",
                        help="exit abruptly (code 75) after N epochs of this invocation, as a preempted "
                             "job would; rehearses resuming")
    parser.add_argument("--tensorboard", default=DEFAULTS.tensorboard, metavar="RESOURCE",
                        help="also write each epoch's scalars to this Vertex AI TensorBoard instance, "
                             "projects/P/locations/L/tensorboards/ID (experiment: OUT's folder name; "
                             "endpoint: the region's, or $HISTOXAI_VERTEX_ENDPOINT)")


def run(args: argparse.Namespace) -> None:
    from histoxai import artifacts
    from histoxai.config import load_config, parse_overrides
    from histoxai.console import import_tensorflow
    from histoxai.training import train

    overrides = parse_overrides(args.set)
    if args.targets:
        overrides["targets"] = args.targets
    if args.stop_after_epochs is not None and args.stop_after_epochs < 1:
        raise InputError(f"--stop-after-epochs {args.stop_after_epochs}: expected a positive integer")
    config = load_config(args.config, overrides)
    artifacts.split_table(args.data)  # a wrong path fails here, before TensorFlow loads
    if args.reuse is not None:
        from histoxai import storage

        if not storage.list_files(args.reuse):
            raise InputError(f"--reuse {args.reuse}: no files there; expected a finished training's folder "
                             "(e.g. the best_model/ of a `histoxai tune` output)")
    if args.tensorboard:  # so does a wrong TensorBoard name, before any training
        from histoxai.vertex_tensorboard import parse_tensorboard

        parse_tensorboard(args.tensorboard, "--tensorboard")
        experiment = _experiment(args.out)
    import_tensorflow()
    metrics = train(config, args.data, args.out, overwrite=args.overwrite,
                    stop_after_epochs=args.stop_after_epochs, reuse=args.reuse)
    for split, values in metrics["r2"].items():
        shown = ", ".join(f"{t} {v:.4f}" if v is not None else f"{t} n/a" for t, v in values.items())
        print(f"R² {split} (n={metrics['n'][split]}): {shown}")
    print(f"wrote {args.out}")
    if args.tensorboard:
        _upload(args, config, experiment)


def _experiment(out: str) -> str:
    """The TensorBoard experiment of a CLI run: OUT's folder name as a valid id."""
    from histoxai.vertex_tensorboard import resource_id

    return resource_id(str(out).rstrip("/").rsplit("/", 1)[-1], "--out")


def _upload(args: argparse.Namespace, config, experiment: str) -> None:
    import io

    import pandas as pd

    from histoxai import artifacts, storage
    from histoxai.vertex_tensorboard import run_id, upload_history

    history = pd.read_csv(io.StringIO(storage.read_text(storage.join(args.out, artifacts.TRAIN_HISTORY))))
    sent = upload_history(history, tensorboard=args.tensorboard, experiment=experiment,
                          run=run_id(config.targets))
    print(f"TensorBoard: {sent['written']} scalars written, {sent['skipped']} already there; {sent['url']}")
