"""`make demo`: the whole pipeline on phantom data, run locally, ending with a summary and the report's path.

Renders phantom samples 3 and 4 (the thesis's training samples) and 5 (held out) at 64 px per voxel
into OUT/phantom, then runs every pipeline step with kfp.local's subprocess runner (the same DAG a
cluster runs: ingest per sample in parallel branches, split, a small tuning study, the multi-task
MD+FA and the single-task CC model, evaluation on every sample, saliency maps with trust measures,
report) into OUT/runs, with settings sized for a 2-core CPU: the tiny CNN at 64 px (the `demo` config),
two tuning trials over the `search_space_demo` space, maps for 48 test patches per model, and what
drives each prediction (explain --nuclei: per-nucleus relevance, concepts, phantom interventions). Both models
are registered in the folder registry OUT/registry, which the next demo keeps: its models are scored
beside this one's champions on the same patches and promoted only if they beat them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from histoxai import storage
from histoxai.errors import InputError

DEMO_SAMPLES = ("3", "4", "5")
TRAIN_SAMPLES = ("3", "4")  # the thesis's training samples; 5 is scored as an unseen tumour
PIXELS_PER_VOXEL = 64


def demo_parameters(samples_uri: str, *, samples=DEMO_SAMPLES, train_samples=TRAIN_SAMPLES,
                    model_registry: str = "") -> dict:
    """The pipeline parameters of the demo run."""
    from histoxai.pipelines.params import config_text, search_space

    return {
        "samples_uri": samples_uri, "samples": list(samples), "train_samples": list(train_samples),
        "patch_size": PIXELS_PER_VOXEL, "config": config_text("demo"),
        "tuning": True, "tuning_trials": 2, "tuning_startup_trials": 1,
        "tuning_search_space": search_space("search_space_demo"),
        "explain_methods": ["gradcam++", "layercam", "smoothgrad:sigma=0.2,n=16", "vanilla", "ig"],
        "explain_max_patches": 48, "explain_trust_patches": 16, "explain_phantom_dir": samples_uri,
        "evaluate_baseline_repeats": 20, "model_registry": model_registry, "explain_nuclei": True,
    }


def run_demo(out: str, *, seed: int = 0, targets: str = "real"):
    """Phantom, then the pipeline; returns the local run (histoxai.pipelines.local_run.LocalRun).
    targets "derived": MD and FA become the phantom's documented functions of the rendered nuclei, so
    the trust measures score MD and FA maps against the nuclei too."""
    from histoxai.phantom import render_phantom
    from histoxai.pipelines.local_run import run_local
    from histoxai.pipelines.task_fork import task_server

    if storage.is_gcs(out):
        raise InputError(f"--out {out}: the demo runs locally; expected a local folder")
    started = time.perf_counter()
    phantom = str(Path(out) / "phantom")
    # the task server imports TensorFlow while the phantom renders, so the pipeline's first tasks fork too
    with task_server() as server:
        # the samples take about as long each, so all three at once end together even on 2 cores
        # (14-15 s against 23-26 s one after another on a 2-core AMD EPYC)
        render_phantom(phantom, [int(s) for s in DEMO_SAMPLES], pixels_per_voxel=PIXELS_PER_VOXEL,
                       seed=seed, targets=targets, overwrite=True, workers=len(DEMO_SAMPLES))
        print(f"phantom samples {', '.join(DEMO_SAMPLES)} in {phantom} "
              f"({time.perf_counter() - started:.0f} s)")
        registry = str(Path(out) / "registry")  # kept between demos: the next one competes with its models
        return run_local(demo_parameters(phantom, model_registry=registry), str(Path(out) / "runs"),
                         task_server=server)


def registry_state(registry: str) -> str:
    """The registry after a demo: per model its versions, the champion, and the newest verdict."""
    from histoxai.model_registry import open_registry

    lines = [f"Model registry {registry}:"]
    target = open_registry(registry)
    for name in target.names():
        versions = target.versions(name)
        champion = next((v.version for v in versions if v.champion), None)
        newest = versions[-1]
        lines.append(f"  {name}: versions {', '.join(str(v.version) for v in versions)}; champion "
                     f"{champion}; version {newest.version} {newest.record.get('verdict')}: "
                     f"{newest.record.get('reason')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m histoxai.pipelines.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/demo", help="local output folder (default outputs/demo)")
    parser.add_argument("--targets", choices=("real", "derived"), default="real",
                        help="the phantom's MD/FA: the real measured maps (default) or functions of the "
                             "rendered nuclei, whose evidence the trust measures can locate")
    args = parser.parse_args(argv)
    from histoxai.components.report.report import terminal_summary

    started = time.perf_counter()
    try:
        # a gs:// URI resolved as a path becomes a local folder named 'gs:': run_demo refuses the URI
        out = args.out if storage.is_gcs(args.out) else str(Path(args.out).resolve())
        run = run_demo(out, targets=args.targets)
    except InputError as err:
        print(f"demo: error: {err}", file=sys.stderr)
        return 2
    print()
    print(terminal_summary(run.summary))
    print()
    print(registry_state(str(Path(args.out).resolve() / "registry")))
    print(f"\nThe report (open it in a browser): {run.report_html}")
    print(f"Every step's outputs:              {run.run_dir}")
    print(f"Full log:                          {run.log}")
    seconds = time.perf_counter() - started
    print(f"Step times (steps run at the same time where they can): {run.step_times()}")
    print(f"Demo time: {seconds:.0f} s (pipeline {run.seconds:.0f} s)")
    write_timing(Path(args.out).resolve(), run, seconds, args.targets)
    return 0


def write_timing(out: Path, run, seconds: float, targets: str) -> None:
    """OUT/demo.json: the demo's time, its run folder and provenance (read by `make docs`, docs/render.py)."""
    import json
    import os

    from histoxai.provenance import stamp

    command = "make demo" if targets == "real" else f"python -m histoxai.pipelines.demo --targets {targets}"
    # the device the run's trainings named: importing TensorFlow here to ask again took seconds
    device = next((m.get("device") for m in run.summary.get("models", {}).values()), None)
    record = {**stamp(command, device), "demo_s": round(seconds, 1), "pipeline_s": round(run.seconds, 1),
              "load_average_15min": round(os.getloadavg()[2], 2),  # other work on the machine slows the demo
              "run_dir": os.path.relpath(Path(run.run_dir).resolve(), out),
              "steps": [{"task": step.task, "started_s": step.started, "seconds": step.seconds,
                         "cpu_seconds": step.cpu_seconds} for step in run.steps]}
    temporary = out / "demo.json.tmp"
    temporary.write_text(json.dumps(record, indent=2) + "\n")
    temporary.replace(out / "demo.json")


if __name__ == "__main__":
    sys.exit(main())
