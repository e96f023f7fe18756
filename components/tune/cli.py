"""Search hyperparameters (Optuna, or a Vertex AI Vizier job) with the training code of `histoxai train`.

Each trial trains the base config (--config, --set) with values sampled from the search space
(--search-space; default: the shipped search_space, Table 3.2 and a few ranges) on the split
manifest (--data) and scores it by the mean validation R² over --objective-targets (default: all
trained targets). TPE sampling (seeded), median pruning on each epoch's validation R², budget by
--tuning-trials and/or --timeout.

OUT/study.journal holds the study: run the same command again after a crash or preemption and it
continues with the finished trials kept (a larger --tuning-trials extends a finished study). At the end
OUT gets trials.parquet, trials.csv, summary.md and best_config.yaml, which trains unchanged, and
best_model/, the best trial's training, which that training publishes instead of repeating it:
  histoxai train --config OUT/best_config.yaml --data SPLIT --out MODEL_DIR --reuse OUT/best_model

--backend vizier writes OUT/vizier_job.json, the request of a Vertex AI hyperparameter tuning job
over the same space (trials on GPU workers of --image), and submits it only with --submit.

Examples:
  histoxai tune --config demo --search-space search_space_demo \\
      --data out/split --targets MD --tuning-trials 4 --out out/tune
  histoxai tune --config thesis --search-space search_space --data gs://b/split \\
      --targets MD,FA --tuning-trials 60 --timeout 86400 --out gs://b/tune/mdfa
"""

from __future__ import annotations

import argparse

from histoxai.components.tune.params import DEFAULTS
from histoxai.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="base training config: demo, thesis, a YAML file or gs:// URI "
                                         "(default: the thesis's values)")
    parser.add_argument("--search-space", default=DEFAULTS.search_space,
                        help="search space: search_space, search_space_demo, a YAML file or gs:// URI "
                             "(default: %(default)s, the thesis's Table 3.2 and a few ranges around it)")
    parser.add_argument("--data", required=True,
                        help="split manifest: split.parquet from `histoxai split` or its folder, local or gs://")
    parser.add_argument("--targets", help="comma-separated target columns to train, e.g. MD,FA or CC")
    parser.add_argument("--objective-targets", default=DEFAULTS.objective_targets,
                        help="comma-separated targets whose mean validation R² is maximised "
                             "(default: all trained targets)")
    parser.add_argument("--out", required=True, help="output folder, local or gs://")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one base config key (value in YAML syntax); repeatable")
    parser.add_argument("--tuning-trials", type=int, default=DEFAULTS.tuning_trials, metavar="N",
                        help="finished trials the study should hold (default %(default)s; 0: no limit, "
                             "then give --timeout)")
    parser.add_argument("--timeout", type=float, default=DEFAULTS.timeout_s, metavar="SECONDS",
                        help="start no new trial after this many seconds of this run (default 0: no limit)")
    parser.add_argument("--startup-trials", type=int, default=DEFAULTS.startup_trials,
                        help="random, never-pruned trials before TPE and pruning start (default %(default)s)")
    parser.add_argument("--warmup-epochs", type=int, default=DEFAULTS.warmup_epochs,
                        help="a trial may be pruned from the end of this epoch on (default %(default)s)")
    parser.add_argument("--seed", type=int, help="sampler seed (default: the config's seed)")
    parser.add_argument("--overwrite", action="store_true", help="discard the study in OUT and start over")
    parser.add_argument("--stop-after-trials", type=int, metavar="N",
                        help="exit abruptly (code 75) after N trials of this run, as a preempted job "
                             "would; rehearses resuming")
    vizier = parser.add_argument_group("Vertex AI Vizier backend")
    vizier.add_argument("--backend", choices=("optuna", "vizier"), default="optuna",
                        help="optuna: run the study here (default); vizier: build a Vertex AI tuning job")
    vizier.add_argument("--project", help="Google Cloud project (vizier)")
    vizier.add_argument("--region", default="us-central1", help="Vertex AI region (vizier)")
    vizier.add_argument("--staging-bucket", help="gs:// staging folder (vizier; default OUT/staging)")
    vizier.add_argument("--image", help="trial container image (vizier; default $HISTOXAI_GPU_IMAGE)")
    vizier.add_argument("--machine-type", default="n1-standard-8", help="trial machine type (vizier)")
    vizier.add_argument("--accelerator-type", default="NVIDIA_TESLA_T4", help="trial GPU type (vizier)")
    vizier.add_argument("--accelerator-count", type=int, default=1, help="GPUs per trial (vizier)")
    vizier.add_argument("--parallel-trials", type=int, default=2, help="trials at once (vizier)")
    vizier.add_argument("--submit", action="store_true", help="submit the Vizier job (needs credentials)")


def _run_vizier(args, base, space) -> None:
    from histoxai import artifacts, storage
    from histoxai.components.tune import vizier

    if not args.project:
        raise InputError("--backend vizier needs --project (the Google Cloud project to run the job in)")
    if not args.tuning_trials:
        raise InputError("--backend vizier needs --tuning-trials (the job's maximum trial count)")
    credentials = None
    if not args.submit:  # build and validate offline: nothing is sent
        from google.auth.credentials import AnonymousCredentials

        credentials = AnonymousCredentials()
    job = vizier.build_tuning_job(
        base, space, args.data, args.out, project=args.project, location=args.region,
        staging_bucket=args.staging_bucket, image=args.image, machine_type=args.machine_type,
        accelerator_type=args.accelerator_type, accelerator_count=args.accelerator_count,
        max_trial_count=args.tuning_trials, parallel_trial_count=args.parallel_trials,
        objective_targets=args.objective_targets.split(",") if args.objective_targets else None,
        credentials=credentials)
    target = storage.join(args.out, artifacts.VIZIER_JOB)
    if storage.exists(target) and not args.overwrite:
        raise InputError(f"{target}: already exists; pass --overwrite to replace it")
    storage.write_text(target, vizier.job_json(job))
    print(f"wrote {target}")
    if args.submit:
        job.run(sync=False)
        print(f"submitted Vertex AI hyperparameter tuning job {job.resource_name}")


def run(args: argparse.Namespace) -> None:
    from histoxai import artifacts
    from histoxai.components.tune.space import load_space
    from histoxai.config import load_config, parse_overrides

    overrides = parse_overrides(args.set)
    if args.targets:
        overrides["targets"] = args.targets
    minimum = {"tuning_trials": 0, "stop_after_trials": 1, "startup_trials": 0, "warmup_epochs": 1,
               "accelerator_count": 0, "parallel_trials": 1}
    for name, low in minimum.items():
        flag, value = "--" + name.replace("_", "-"), getattr(args, name)
        if value is not None and value < low:
            raise InputError(f"{flag} {value}: expected an integer >= {low}")
    base = load_config(args.config, overrides)
    if args.timeout < 0:
        raise InputError(f"--timeout {args.timeout}: expected seconds >= 0 (0: no limit)")
    space = load_space(args.search_space)
    if args.backend == "vizier":
        _run_vizier(args, base, space)
        return
    from histoxai.components.tune.tune import tune
    from histoxai.console import import_tensorflow

    artifacts.split_table(args.data)  # a wrong path fails here, before TensorFlow loads
    import_tensorflow()

    summary = tune(base, space, args.data, args.out, n_trials=args.tuning_trials or None,
                   timeout_s=args.timeout or None,
                   objective_targets=args.objective_targets.split(",") if args.objective_targets else None,
                   startup_trials=args.startup_trials, warmup_epochs=args.warmup_epochs, seed=args.seed,
                   overwrite=args.overwrite, stop_after_trials=args.stop_after_trials)
    print(f"trials: {summary['trials']} ({summary['complete']} complete, {summary['pruned']} pruned, "
          f"{summary['failed']} failed)")
    print(f"best: trial {summary['best_trial']}, mean validation R² {summary['objective']:.4f} "
          f"({', '.join(summary['objective_targets'])}); params {summary['params']}")
    reuse = (f" --reuse {summary['best_model']} (publishes the best trial's model, kept there, instead of "
             "training it again)") if summary["best_model"] else ""
    print(f"wrote {args.out}; train the best config with: histoxai train --config {summary['best_config']} "
          f"--data {args.data} --out MODEL_DIR{reuse}")
