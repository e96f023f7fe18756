"""The built wheel works apart from the checkout: configs are package data, nothing walks up to the repo.

The wheel is built from the checkout, unpacked into a folder of its own (an install without
dependencies: those come from the test environment) and run from another working directory, with
the checkout's own code out of reach.
"""

from __future__ import annotations

import os
import re
import shutil
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
    # build from a copy of the files git would commit: setuptools writes build/ beside the sources,
    # and a stale build/ in the checkout would slip deleted modules into later wheels
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], check=True, capture_output=True, text=True).stdout
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():
            (root / "src" / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / "src" / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(root / "dist"), str(root / "src")], check=True, capture_output=True,
                   timeout=300)
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
    thesis, demo = (yaml.safe_load((tmp_path / name).read_text())["root"]["inputDefinitions"]["parameters"]
                    for name in ("default.yaml", "demo.yaml"))
    assert "EfficientNetV2S" in thesis["config"]["defaultValue"], thesis["config"]
    assert "backbone: tiny" in demo["config"]["defaultValue"], demo["config"]
    # the search space default is the shipped file, read as package data
    assert "backbone" in thesis["tuning_search_space"]["defaultValue"]["search"]


def test_the_installed_wheel_names_its_shipped_configs(installed, tmp_path):
    done = histoxai(installed, tmp_path, "compile", "--config", "thesiss", "--out", "x.yaml")
    assert done.returncode == 2 and "did you mean thesis?" in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "x.yaml").exists()
    version = histoxai(installed, tmp_path, "--version")
    assert version.returncode == 0 and version.stdout.strip() == "histoxai 0.1.0", version


def test_code_version_names_the_commit_only_for_a_checkout(installed, tmp_path):
    from histoxai.artifacts import code_version

    assert re.fullmatch(r"0\.1\.0\+g[0-9a-f]{12}(\.dirty)?", code_version()), code_version()
    env = {k: v for k, v in os.environ.items() if k != "HISTOXAI_CODE_VERSION"}
    done = subprocess.run([sys.executable, "-c", "from histoxai.artifacts import code_version; "
                           "print(code_version())"], cwd=tmp_path, capture_output=True, text=True,
                          env={**env, "PYTHONPATH": str(installed)}, timeout=120)
    assert done.stdout.strip() == "0.1.0", done
