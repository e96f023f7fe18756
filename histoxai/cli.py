"""The `histoxai` command: one subcommand per pipeline step, plus the pipeline, the app and the phantom."""

import argparse
import importlib
import re
import sys

from histoxai import __version__
from histoxai.errors import InputError, did_you_mean

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
    "predict": "histoxai.components.predict.cli",
    "explain": "histoxai.components.explain.cli",
    "register": "histoxai.components.register.cli",
    "report": "histoxai.components.report.cli",
    "app": "histoxai.app.cli",
    "compile": "histoxai.pipelines.cli_compile",
    "run-local": "histoxai.pipelines.cli_run_local",
    "submit": "histoxai.pipelines.cli_submit",
    "retrain": "histoxai.pipelines.cli_retrain",
    "models": "histoxai.pipelines.cli_models",
}
_INVALID_CHOICE = re.compile(r"invalid choice: '(?P<given>[^']*)' \(choose from (?P<known>.*)\)")


class Parser(argparse.ArgumentParser):
    """argparse with a "did you mean" for a mistyped choice (a subcommand, --strategy ...)."""

    def error(self, message: str):
        wrong = _INVALID_CHOICE.search(message)
        if wrong:
            known = re.findall(r"'([^']*)'", wrong["known"])
            message += did_you_mean(wrong["given"], known)
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="histoxai",
        description="Explainable deep learning on histology and diffusion MRI. "
        "Every path may be a local path or a gs:// URI. Lists of values are comma-separated "
        "(--samples 3,4,5); several paths are separate arguments; KEY=VALUE options repeat.",
    )
    parser.add_argument("--version", action="version", version=f"histoxai {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        doc = (module.__doc__ or "").strip()
        summary = doc.splitlines()[0] if doc else ""
        step = sub.add_parser(
            name, help=summary, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.add_arguments(step)
        step.set_defaults(_run=module.run, _parser=step)
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed command line; an unknown option ends like argparse's own errors, with a hint."""
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:
        options = [o for action in args._parser._actions for o in action.option_strings]
        first = next((u for u in unknown if u.startswith("-")), unknown[0])
        hint = did_you_mean(first.split("=", 1)[0], options) if first.startswith("-") else ""
        args._parser.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        args._run(args)
    except InputError as err:
        print(f"histoxai {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
