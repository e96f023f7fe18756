"""The command line reads the same everywhere: option names, lists, configs, hints, early input checks."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict

import pytest

from histoxai import __version__
from histoxai.cli import build_parser, main
from histoxai.console import START_UP_NOISE

RETIRED = {"--space": "--search-space", "--n-trials": "--tuning-trials", "--repeats": "--baseline-repeats"}


def subcommand_parsers() -> dict:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return dict(sub.choices)


def test_one_option_name_means_one_thing_in_every_subcommand():
    shapes, used = defaultdict(set), set()
    for name, parser in subcommand_parsers().items():
        for action in parser._actions:
            for option in action.option_strings:
                used.add(option)
                shapes[option].add((action.nargs, name))
    assert not used & set(RETIRED), f"retired spellings still offered: {sorted(used & set(RETIRED))}"
    # a list option takes one comma-separated value (or repeats), never several words in one place
    spread = {o: sorted(s) for o, s in shapes.items() if len({nargs for nargs, _ in s}) > 1}
    assert not spread, spread
    words = sorted(f"{name} {o}" for o, s in shapes.items() for nargs, name in s if nargs in ("+", "*"))
    assert not words, f"options taking several words: {words}"


@pytest.mark.parametrize("argv", [
    ["train", "--data", "D", "--out", "O"],
    ["tune", "--data", "D", "--out", "O"],
    ["compile", "--out", "P"],
    ["run-local", "--samples-uri", "S"],
])
def test_every_config_option_takes_a_shipped_name(argv, capsys, tmp_path):
    assert main([*argv, "--config", "dem"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--config dem: no such file" in err, err
    assert "demo, thesis" in err and "(did you mean demo?)" in err, err


@pytest.mark.parametrize(("argv", "hint"), [
    (["compil", "--out", "x"], "did you mean compile?"),
    (["split", "--out", "x", "--strategy", "blockd"], "did you mean blocked?"),
    (["split", "--out", "x", "--trian-samples", "3"], "did you mean --train-samples?"),
    (["tune", "--data", "d", "--out", "o", "--space", "s"], "did you mean --search-space?"),
])
def test_a_mistyped_command_or_option_gets_a_hint(argv, hint, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert hint in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "hint"), [
    (["train", "--config", "demo", "--set", "batch_sise=8", "--data", "d", "--out", "o"],
     "unknown key 'batch_sise' (did you mean batch_size?)"),
    (["run-local", "--samples-uri", "s", "--param", "pach_size=64"],
     "pipeline parameter 'pach_size': unknown (did you mean patch_size?)"),
])
def test_a_mistyped_key_gets_a_hint(argv, hint, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and hint in err, err


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"histoxai {__version__}"


CHECK = ("import sys; from histoxai.cli import main; rc = main(sys.argv[1:]); "
         "print('tensorflow' in sys.modules, rc)")


@pytest.mark.parametrize("argv", [
    ["train", "--config", "demo", "--data", "/no/such/split", "--out", "OUT"],
    ["tune", "--config", "demo", "--data", "/no/such/split", "--out", "OUT"],
    ["explain", "--model", "/no/such/model", "--data", "/no/such/split", "--out", "OUT"],
    ["evaluate", "--model", "/no/such/model", "--data", ".", "--out", "OUT"],
    ["evaluate", "--model", "/no/such/model", "--data", "/no/such/split", "--out", "OUT"],
])
def test_wrong_paths_fail_before_tensorflow_loads(argv, tmp_path):
    done = subprocess.run([sys.executable, "-c", CHECK, *argv], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.stdout.split() == ["False", "2"], (done.stdout, done.stderr[-2000:])
    assert len(done.stderr.strip().splitlines()) == 1 and "/no/such/" in done.stderr
    assert not (tmp_path / "OUT").exists()


def test_tensorflow_start_up_notices_stay_off_the_terminal():
    quiet = subprocess.run([sys.executable, "-c", "import gc; from histoxai.console import "
                            "import_tensorflow; import_tensorflow(); print(gc.get_freeze_count())"],
                           capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0 and not START_UP_NOISE.search(quiet.stderr), quiet.stderr
    assert int(quiet.stdout) > 100_000  # what the import brought is frozen (histoxai/console.py)
    # the control: a plain import prints them (if TensorFlow ever stops, this filter can go)
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    loud = subprocess.run([sys.executable, "-c", "import tensorflow"], capture_output=True, text=True,
                          timeout=300, env=env)
    assert START_UP_NOISE.search(loud.stderr), loud.stderr
