"""Register a trained model as the next version in a model registry; promote it only if it wins.

The registry: a folder (local or gs://; one index per model, versions copied in) or
vertex://PROJECT/REGION (the Vertex AI Model Registry; version files go under --staging, a gs://
folder). The version gets the model's files, a SavedModel export and the patches it trained on
(from --split), labels (config hash, code version, training samples) and a record (run, samples,
verdict, scores). It becomes the champion when the registry has none, or when `histoxai evaluate
--champion NAME=DIR` compared it with the champion (--evaluation) and the promotion rule holds:
the mean --metric over the held-out samples (the test set when none) beats the champion's by
--margin and no target falls by more than --tolerance.

Example (the champion fetched, both scored on the same patches, then registered):
  histoxai models fetch histoxai-multitask --registry outputs/registry --out outputs/champion
  histoxai evaluate --model multitask=outputs/models/mdfa --champion multitask=outputs/champion \\
      --data outputs/split --out outputs/evaluate
  histoxai register --model outputs/models/mdfa --split outputs/split --evaluation outputs/evaluate \\
      --evaluated-as multitask --registry outputs/registry --name histoxai-multitask
"""

from __future__ import annotations

import argparse

from histoxai.components.register.params import DEFAULTS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="training output folder (`histoxai train`), local or gs://")
    parser.add_argument("--split", required=True, help="the split folder the model trained on")
    parser.add_argument("--evaluation", required=True,
                        help="the evaluate output that scored the model (and its champion, with --champion)")
    parser.add_argument("--evaluated-as", required=True, metavar="NAME",
                        help="the model's name in that evaluation (e.g. multitask)")
    parser.add_argument("--registry", required=True, help="a folder (local or gs://) or vertex://PROJECT/REGION")
    parser.add_argument("--name", required=True, help="the registered model's name (e.g. histoxai-multitask)")
    parser.add_argument("--run", default="", help="the run that trained it, recorded with the version")
    parser.add_argument("--staging", default="", help="vertex://: the gs:// folder the version files go to")
    parser.add_argument("--metric", default=DEFAULTS.promotion_metric, help="promotion metric: r2 or "
                        "pearson_r2 (default: %(default)s)")
    parser.add_argument("--margin", type=float, default=DEFAULTS.promotion_margin,
                        help="how much the mean metric must beat the champion's (default: %(default)s)")
    parser.add_argument("--tolerance", type=float, default=DEFAULTS.promotion_tolerance,
                        help="how much any one target may fall (default: %(default)s)")


def run(args: argparse.Namespace) -> None:
    from histoxai import artifacts, storage
    from histoxai.components.register.register import check_rule, register
    from histoxai.console import import_tensorflow
    from histoxai.errors import InputError

    rule = check_rule(args.metric, args.margin, args.tolerance)
    artifacts.model_file(args.model)
    artifacts.split_table(args.split, "--split")
    if not storage.exists(storage.join(args.evaluation, artifacts.EVALUATION_TABLE)):
        raise InputError(f"--evaluation {args.evaluation}: no {artifacts.EVALUATION_TABLE}; expected a "
                         "`histoxai evaluate` output folder")
    import_tensorflow()
    result = register(model_dir=args.model, split_dir=args.split, evaluation=args.evaluation,
                      model=args.evaluated_as, registry=args.registry, name=args.name, rule=rule,
                      run=args.run, staging=args.staging)
    print(result["markdown"])
    version = result["version"]
    state = "the champion" if result["verdict"]["promote"] else "registered; the champion stays"
    print(f"{args.name} version {version['version']} ({version['resource_name']}): {state}")
