"""Pipeline parameters from the command line: shared by `histoxai run-local` and `histoxai submit`.

Common parameters have their own options (--samples-uri, --samples, --train-samples, --config,
--set, --tuning-trials, --search-space); any other goes through --param NAME=VALUE (VALUE in YAML:
64, true, [0.7, 0.15, 0.15]).
Values are checked against the pipeline's own interface (names, types, required parameters), so a
typo fails here with one line, not in the cloud an hour later.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from histoxai.errors import InputError, did_you_mean

# KFP's type names of pipeline parameters -> the Python types a value may have
_TYPES = {"String": (str,), "Integer": (int,), "Float": (int, float), "Boolean": (bool,),
          "List": (list,), "Dict": (dict,)}


def add_parameter_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("pipeline parameters")
    group.add_argument("--samples-uri", help="folder (local or gs://) holding one folder per sample, "
                                             "in the dataset layout")
    group.add_argument("--samples", help="comma-separated ids of the samples to ingest (default: all 16)")
    group.add_argument("--train-samples", help="comma-separated ids of the samples pooled for training "
                                               "(default: 3,4)")
    group.add_argument("--config", help="training config: a YAML file (local or gs://) or the name of one in "
                                        "the package (demo, thesis); default: the compiled default (thesis)")
    group.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override one training config key (value in YAML); repeatable")
    group.add_argument("--tuning-trials", type=int, metavar="N",
                       help="turn tuning on with a budget of N trials (default: tuning off)")
    group.add_argument("--search-space", help="tuning search space: a YAML file (local or gs://) or a "
                       "shipped name (search_space, search_space_demo; default: search_space)")
    group.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                       help="any pipeline parameter (value in YAML, e.g. patch_size=64, tuning=true); "
                            "repeatable")


def search_space(source: str) -> dict:
    """A tuning search space ({search, fixed}) from a file or shipped name, checked by the tune step."""
    import yaml

    from histoxai.components.tune.space import parse_space
    from histoxai.config import read_named

    try:
        values = yaml.safe_load(read_named(source, "--search-space", kind="search_space")) or {}
    except yaml.YAMLError as err:
        raise InputError(f"--search-space {source}: not valid YAML ({err})") from None
    parse_space(values, source)
    return values


def config_text(source: str) -> str:
    """The training config named by `source` (file, gs:// URI or shipped name), validated, as one line
    of YAML (a pipeline parameter's default must be a single line in the compiled YAML's header)."""
    import yaml

    from histoxai.config import config_from_yaml, read_named

    text = read_named(source, "--config")
    config_from_yaml(text, source=source)
    values = yaml.safe_load(text) or {}
    return yaml.safe_dump(values, default_flow_style=True, sort_keys=False, width=10**6).strip()


def _comma_list(text: str, option: str) -> list[str]:
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not item for item in items):
        raise InputError(f"{option} {text!r}: expected a comma-separated list without empty entries, "
                         "e.g. 3,4")
    return items


def parse_param_pairs(pairs: list[str]) -> dict[str, Any]:
    """--param NAME=VALUE pairs (VALUE in YAML) as a dict."""
    from histoxai.config import parse_overrides

    return parse_overrides(pairs, "--param", "NAME=VALUE")


def parameters_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The parameters the options name (not yet checked against a pipeline)."""
    values = parse_param_pairs(args.param)
    if args.samples_uri:
        values["samples_uri"] = args.samples_uri
    if args.samples:
        values["samples"] = _comma_list(args.samples, "--samples")
    if args.train_samples:
        values["train_samples"] = _comma_list(args.train_samples, "--train-samples")
    if args.config:
        values["config"] = config_text(args.config)
    if args.tuning_trials is not None:
        if args.tuning_trials < 1:
            raise InputError(f"--tuning-trials {args.tuning_trials}: expected a number of trials >= 1")
        values.update(tuning=True, tuning_trials=args.tuning_trials)
    if args.search_space:
        values["tuning_search_space"] = search_space(args.search_space)
    if args.set:
        from histoxai.config import config_from_yaml, parse_overrides

        config_from_yaml(values.get("config", ""), parse_overrides(args.set))  # fail here, not in the run
        values["config_overrides"] = list(args.set)
    return values


def check_parameters(values: Mapping[str, Any], component_spec) -> dict[str, Any]:
    """Check names and types against a pipeline's inputs; every required parameter must be given."""
    inputs = component_spec.inputs or {}
    checked = {}
    for name, value in values.items():
        if name not in inputs:
            raise InputError(f"pipeline parameter {name!r}: unknown{did_you_mean(name, inputs)}; "
                             f"expected one of {sorted(inputs)}")
        kind = inputs[name].type
        if kind == "String" and value is None:
            value = ""  # NAME= gives YAML's null: an empty string
        elif kind == "String" and isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)  # YAML reads 3 as a number; a string parameter wants "3"
        allowed = _TYPES.get(kind, (object,))
        if not isinstance(value, allowed) or (kind in ("Integer", "Float") and isinstance(value, bool)):
            raise InputError(f"pipeline parameter {name}={value!r}: expected a {kind.lower()}")
        checked[name] = value
    missing = sorted(n for n, spec in inputs.items() if not spec.optional and n not in checked)
    if missing:
        options = ", ".join(f"--{n.replace('_', '-')}" if n == "samples_uri" else f"--param {n}=..."
                            for n in missing)
        raise InputError(f"pipeline parameter {', '.join(missing)}: required; give {options}")
    return checked
