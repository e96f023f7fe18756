"""The `histoxai` command: one subcommand per pipeline step."""

import argparse
import importlib
import sys

from histoxai.errors import InputError

# subcommand -> module exposing add_arguments(parser) and run(args); imported lazily so that
# `histoxai --help` stays fast and a step's heavy dependencies load only when it runs.
SUBCOMMANDS = {
    "phantom": "histoxai.phantom.cli",
    "ingest": "histoxai.components.ingest.cli",
    "split": "histoxai.components.split.cli",
    "train": "histoxai.components.train.cli",
    "tune": "histoxai.components.tune.cli",
    "baseline": "histoxai.components.evaluate.cli_baseline",
    "evaluate": "histoxai.components.evaluate.cli",
    "explain": "histoxai.components.explain.cli",
    "app": "histoxai.app.cli",
    "compile": "histoxai.pipelines.cli_compile",
    "run-local": "histoxai.pipelines.cli_run_local",
    "submit": "histoxai.pipelines.cli_submit",
    "retrain": "histoxai.pipelines.cli_retrain",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="histoxai",
        description="Explainable deep learning on histology and diffusion MRI. "
        "Every path may be a local path or a gs:// URI.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        doc = (module.__doc__ or "").strip()
        summary = doc.splitlines()[0] if doc else ""
        step = sub.add_parser(
            name, help=summary, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.add_arguments(step)
        step.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args._run(args)
    except InputError as err:
        print(f"histoxai {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
