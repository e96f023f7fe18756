"""`--help` of compile, submit and run-local lists every run parameter with the pipeline's own default."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from histoxai.cli import main


def _inputs(pipeline: str) -> dict:
    if pipeline == "predict":
        from histoxai.pipelines.predict_pipeline import build_predict_pipeline

        return build_predict_pipeline().component_spec.inputs
    from histoxai.pipelines.pipeline import CompileOptions, build_pipeline

    return build_pipeline(CompileOptions()).component_spec.inputs


def _help(command: str, capsys) -> str:
    with pytest.raises(SystemExit) as ended:
        main([command, "--help"])
    assert ended.value.code == 0
    return capsys.readouterr().out


def _section(text: str, heading: str) -> dict[str, str]:
    """name -> the rest of its line, for the parameter lines under `heading`."""
    lines = text.split(heading, 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    return {line.split()[0]: line.strip() for line in lines}


def _check(listed: dict[str, str], inputs) -> None:
    assert list(listed) == list(inputs)  # every input, in the pipeline's order, and nothing else
    for name, spec in inputs.items():
        line = listed[name]
        assert line.startswith(f"{name} ({spec.type.lower()}) = "), line
        shown = line.split(" = ", 1)[1]
        if not spec.optional:
            assert shown == "required"
            continue
        full = yaml.safe_dump([spec.default], default_flow_style=True, width=10**6).strip()[1:-1]
        # a short default in full (as --param takes it); a long one in a few words
        assert shown == full or (len(full) > 90 and len(shown) < 90), (name, shown)
        if shown != full and isinstance(spec.default, list):
            assert f"({len(spec.default)} items)" in shown


def test_compile_help_lists_every_run_parameter_of_both_pipelines_with_its_default(capsys):
    text = _help("compile", capsys)
    _check(_section(text, "Run parameters of the training pipeline"), _inputs("train"))
    _check(_section(text, "Run parameters of the prediction pipeline"), _inputs("predict"))
    train = _section(text, "Run parameters of the training pipeline")
    assert train["config"] == "config (string) = (the shipped `thesis` config, one line of YAML)"
    assert "search_space" in train["tuning_search_space"]


def test_submit_help_shows_the_prediction_pipelines_parameters_too_and_run_local_only_training(capsys):
    text = _help("submit", capsys)
    _check(_section(text, "Run parameters of the prediction pipeline"), _inputs("predict"))
    _check(_section(text, "Run parameters of the training pipeline"), _inputs("train"))
    text = _help("run-local", capsys)
    _check(_section(text, "Run parameters of the training pipeline"), _inputs("train"))
    assert "prediction pipeline" not in text


def test_histoxai_help_builds_no_pipeline():
    code = ("import sys\nfrom histoxai.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.startswith(('kfp', 'histoxai.pipelines.pipeline'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"
