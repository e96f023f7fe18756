"""Run the whole pipeline on this machine with kfp.local (subprocess runner, no Docker), then print a summary.

Every step runs as a subprocess of this Python environment, in the order and with the artifacts a
cluster would use. Outputs land in OUT/histoxai-<timestamp>/<step>/<output>, the report also as
OUT/histoxai-<timestamp>/report.html, the full log in OUT/histoxai-<timestamp>.log. Samples may be
read from gs://; OUT must be local (use --publish gs://... to copy the finished run to a bucket).
Before any step starts, every sample of --samples must have its folder with the dataset's MR file
(SAMPLES_URI/<id>/coreg_fine/ver1/MR.mat) and --train-samples must be among them.
The defaults (the thesis's config, all six saliency methods on every test patch) are sized for a
GPU cluster; on a CPU use a small config and limit the maps (--param explain_max_patches=48), as
`make demo` does.

Examples:
  histoxai run-local --samples-uri outputs/demo/phantom --samples 3,4,5 --config demo \\
      --param patch_size=64 --param explain_max_patches=48 --out outputs/runs
  histoxai run-local --samples-uri gs://BUCKET/samples --samples 3,4,5 --config demo \\
      --set finetune_epochs=3 --param explain_max_patches=48 --out outputs/runs --publish gs://BUCKET/runs
"""

from __future__ import annotations

import argparse

from histoxai.pipelines.help import add_run_parameters_help
from histoxai.pipelines.params import add_parameter_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_parameters_help(parser, ("train",))  # --help lists the run parameters (training pipeline only)
    parser.add_argument("--out", default="outputs/runs",
                        help="local folder for the run's outputs (the pipeline root; default outputs/runs)")
    parser.add_argument("--publish", metavar="URI",
                        help="afterwards, copy the run folder and its log to URI/<run name> (e.g. gs://...)")
    add_parameter_arguments(parser)


def run(args: argparse.Namespace) -> None:
    from histoxai.components.report.report import terminal_summary
    from histoxai.pipelines.local_run import publish_run, run_local
    from histoxai.pipelines.params import parameters_from_args

    result = run_local(parameters_from_args(args), args.out)
    print(terminal_summary(result.summary))
    print(f"\nrun folder  {result.run_dir}")
    print(f"report      {result.report_html}")
    print(f"log         {result.log}")
    print(f"took        {result.seconds:.0f} s ({result.step_times()})")
    if args.publish:
        print(f"published   {publish_run(result, args.publish)}")
