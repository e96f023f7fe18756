"""The built wheel works apart from the checkout: configs are package data, nothing walks up to the repo.

The wheel is built from the checkout, unpacked into a folder of its own (an install without
dependencies: those come from the test environment) and run from another working directory, with
the checkout's own code out of reach.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RUN = ("import sys, histoxai; from histoxai.cli import main; "
       "print('loaded from', histoxai.__file__, file=sys.stderr); sys.exit(main(sys.argv[1:]))")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel's files, unpacked into a site folder of their own."""
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(root / "dist"), str(REPO)], check=True, capture_output=True, timeout=300)
    wheels = list((root / "dist").glob("histoxai-*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = wheel.namelist()
        assert "histoxai/configs/demo.yaml" in names and "histoxai/app/main.py" in names, names
        assert not any(n.startswith(("configs/", "tests/")) for n in names)
        wheel.extractall(root / "site")
    return root / "site"


def histoxai(installed: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    # PYTHONPATH comes before the checkout's editable install, so the unpacked wheel is what runs.
    env = {**os.environ, "PYTHONPATH": str(installed)}
    env.pop("HISTOXAI_CODE_VERSION", None)
    done = subprocess.run([sys.executable, "-c", RUN, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert f"loaded from {installed}" in done.stderr, done.stderr[-2000:]
    return done


def test_compile_runs_from_the_installed_wheel(installed, tmp_path):
    done = histoxai(installed, tmp_path, "compile", "--out", "default.yaml")
    assert done.returncode == 0, done.stderr[-2000:]
    done = histoxai(installed, tmp_path, "compile", "--config", "demo", "--out", "demo.yaml")
    assert done.returncode == 0, done.stderr[-2000:]
    thesis, demo = (yaml.safe_load((tmp_path / name).read_text()) for name in ("default.yaml", "demo.yaml"))
    default = {name: spec["defaultValue"] for name, spec in
               (("thesis", thesis), ("demo", demo)) for spec in [spec["root"]["inputDefinitions"]
                                                                  ["parameters"]["config"]]}
    assert "EfficientNetV2S" in default["thesis"] and "backbone: tiny" in default["demo"], default
    # the search space default is the shipped file, read as package data
    space = thesis["root"]["inputDefinitions"]["parameters"]["tuning_search_space"]["defaultValue"]
    assert "backbone" in space["search"]


def test_the_installed_wheel_names_its_shipped_configs(installed, tmp_path):
    done = histoxai(installed, tmp_path, "compile", "--config", "thesiss", "--out", "x.yaml")
    assert done.returncode == 2 and "did you mean thesis?" in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "x.yaml").exists()
    version = histoxai(installed, tmp_path, "--version")
    assert version.returncode == 0 and version.stdout.strip() == "histoxai 0.1.0", version
