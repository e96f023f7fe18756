"""The run parameters in `--help` of compile, submit and run-local, read from the pipelines' own interface.

Each line is `name (type) = default` as the compiled package holds it, built from the pipeline's
component_spec (never a copy of the defaults). Building a pipeline imports KFP and every step's
component, so the list is built only when that subcommand's --help is asked for, never while the
`histoxai` parser itself is built (`histoxai --help` stays fast).
"""

from __future__ import annotations

import argparse

HEADINGS = {"train": "Run parameters of the training pipeline",
            "predict": "Run parameters of the prediction pipeline (--pipeline predict)"}
_WIDEST = 90  # a default longer than this is shortened


def _yaml(value) -> str:
    """A value as --param NAME=VALUE takes it: one line of YAML."""
    import yaml

    return yaml.safe_dump([value], default_flow_style=True, width=10**6).strip()[1:-1]


def _shortened(name: str, value) -> str:
    """A default as shown in --help: short values in full, long ones in a few words."""
    from histoxai.components.tune.params import DEFAULTS as TUNE
    from histoxai.pipelines.pipeline import DEFAULT_CONFIG

    text = _yaml(value)
    if len(text) <= _WIDEST:
        return text
    if name == "config":
        return f"(the shipped `{DEFAULT_CONFIG}` config, one line of YAML)"
    if name == "tuning_search_space":
        return f"(the shipped `{TUNE.search_space}` search space)"
    if isinstance(value, list):
        return f"[{', '.join(_yaml(v) for v in value[:3])}, ... ({len(value)} items)]"
    return text[:_WIDEST - 4] + " ..."


def component_inputs(pipeline: str) -> dict:
    """name -> input spec (.type, .default, .optional) of the `train` or `predict` pipeline."""
    if pipeline == "predict":
        from histoxai.pipelines.predict_pipeline import build_predict_pipeline

        return dict(build_predict_pipeline().component_spec.inputs or {})
    from histoxai.pipelines.pipeline import CompileOptions, build_pipeline

    return dict(build_pipeline(CompileOptions()).component_spec.inputs or {})


def parameter_lines(pipeline: str) -> list[str]:
    """One line per run parameter: `name (type) = default`, or `= required`."""
    lines = []
    for name, spec in component_inputs(pipeline).items():
        default = _shortened(name, spec.default) if spec.optional else "required"
        lines.append(f"  {name} ({spec.type.lower()}) = {default}")
    return lines


def run_parameters_text(pipelines: tuple[str, ...]) -> str:
    """The epilog: per pipeline a heading, then its parameters (set them with --param NAME=VALUE)."""
    blocks = []
    for pipeline in pipelines:
        blocks.append("\n".join([f"{HEADINGS[pipeline]}; set any with --param NAME=VALUE (value in YAML):",
                                 *parameter_lines(pipeline)]))
    return "\n\n".join(blocks)


class _RunParametersHelp(argparse.Action):
    """-h/--help that fills the parser's epilog with the run parameters just before printing."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None,
                 pipelines: tuple[str, ...] = ("train",)):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)
        self.pipelines = pipelines

    def __call__(self, parser, namespace, values, option_string=None):
        parser.epilog = run_parameters_text(self.pipelines)
        parser.print_help()
        parser.exit()


def add_run_parameters_help(parser: argparse.ArgumentParser, pipelines: tuple[str, ...]) -> None:
    """Replace the parser's -h/--help by one that lists the run parameters of `pipelines`.

    An argparse Action, not a precomputed epilog: the pipelines are built only when --help is given
    (histoxai/cli.py builds every subcommand's parser for `histoxai --help`). The "resolve" conflict
    handler of the options group, where argparse put its own -h/--help, lets the new one take its place.
    """
    group = parser._optionals  # argparse's "options" group, which holds its own -h/--help
    group.conflict_handler = "resolve"
    group.add_argument("-h", "--help", action=_RunParametersHelp, pipelines=pipelines,
                       help="show this help message, with every run parameter and its default, and exit")
    group.conflict_handler = "error"
