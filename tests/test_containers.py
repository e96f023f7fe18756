"""Container images: Dockerfiles (hadolint, pinned base, unprivileged, hashed installs), the image pins
and Cloud Build."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.infra_common import (
    CONTAINERS,
    DOCKERFILES,
    REPO,
    check_hashed_installs,
    load_image_pins,
    pip_installs,
    run,
)

# --- containers ---------------------------------------------------------------------------------------

def test_the_three_images_have_dockerfiles():
    assert {path.name for path in DOCKERFILES} == {"cpu.Dockerfile", "gpu.Dockerfile", "app.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfile_passes_hadolint(tools, dockerfile):
    result = run(tools / "hadolint", "--no-color", "--failure-threshold", "style", dockerfile)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_rejects_an_unpinned_dockerfile(tools, tmp_path):
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    result = run(tools / "hadolint", "--no-color", bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3013" in result.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfile_pins_its_base_and_runs_unprivileged(dockerfile):
    text = dockerfile.read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.MULTILINE)
    assert base, "the base image is chosen by ARG PYTHON_IMAGE"
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+@sha256:[0-9a-f]{64}", base.group(1))
    froms = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert froms and all(image == "${PYTHON_IMAGE}" for image in froms)
    final_stage = text.split("\nFROM ")[-1]
    user = re.findall(r"^USER (\S+)", final_stage, re.MULTILINE)
    assert user and user[-1].split(":")[0] not in ("root", "0")


def test_all_images_share_one_base():
    bases = {re.search(r"^ARG PYTHON_IMAGE=(\S+)$", path.read_text(), re.MULTILINE).group(1)
             for path in DOCKERFILES}
    assert len(bases) == 1


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfile_installs_hashed_locks_then_the_project_alone(dockerfile):
    text = dockerfile.read_text()
    variant = "gpu" if dockerfile.name == "gpu.Dockerfile" else "cpu"
    locks = check_hashed_installs(pip_installs(text), dockerfile.name)
    assert locks == ["requirements-build-lock.txt", f"requirements-{variant}-lock.txt"]
    assert f"COPY requirements-build-lock.txt containers/requirements-{variant}-lock.txt ./" in text
    assert "--no-build-isolation -r" in text, "the one sdist builds with the locked setuptools"
    project = pip_installs(text)[-1]
    assert "--no-deps" in project and project.endswith(" ."), "the project last, without its dependencies"

def test_app_image_starts_the_review_app_on_port():
    text = (CONTAINERS / "app.Dockerfile").read_text()
    cmd = re.search(r"^CMD (.+)$", text, re.MULTILINE).group(1)
    assert json.loads(cmd)[-1] == 'exec histoxai app --run "$RUN_URI" --port "$PORT"'


def test_dockerignore_sends_what_the_images_install_and_nothing_else():
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*", "an allowlist starts by ignoring everything"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    needed |= {"pyproject.toml", "constraints.txt", pyproject["project"]["readme"]}
    needed |= {path.split("/")[0] for path in pyproject["project"]["license-files"]}
    for dockerfile in DOCKERFILES:
        for sources in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile.read_text(), re.MULTILINE):
            needed |= {source for source in sources.split() if source != "."}
    missing = {path for path in needed if path not in allowed and path.split("/")[0] not in allowed}
    assert not missing, f".dockerignore does not send {sorted(missing)}"
    assert not allowed & {".venv", ".venv-tools", "outputs", "build", ".git", "tests"}


def test_image_pins_swap_only_tensorflow_for_gpu(tmp_path):
    pins = load_image_pins()
    constraints = (REPO / "constraints.txt").read_text().splitlines()
    cpu_version = next(line.split("==")[1] for line in constraints if line.startswith("tensorflow_cpu=="))
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    cpu_spec = next(dep for dep in pyproject["project"]["dependencies"] if dep.startswith("tensorflow-cpu"))

    requirements, gpu_constraints = pins.write_pins(
        "gpu", REPO / "pyproject.toml", REPO / "constraints.txt", tmp_path / "gpu")
    lines = requirements.read_text().splitlines()
    assert cpu_spec.replace("tensorflow-cpu", "tensorflow[and-cuda]") in lines
    assert not any(line.startswith("tensorflow-cpu") for line in lines)
    assert set(pyproject["build-system"]["requires"]) <= set(lines)
    swapped = gpu_constraints.read_text().splitlines()
    assert f"tensorflow=={cpu_version}" in swapped
    assert [line for line in swapped if line != f"tensorflow=={cpu_version}"] == \
        [line for line in constraints if not line.startswith("tensorflow_cpu==")]

    requirements, cpu_constraints = pins.write_pins(
        "cpu", REPO / "pyproject.toml", REPO / "constraints.txt", tmp_path / "cpu")
    assert cpu_constraints.read_text().splitlines() == constraints
    assert cpu_spec in requirements.read_text().splitlines()


def test_image_pins_reject_a_loose_tensorflow_pin(tmp_path):
    pins = load_image_pins()
    loose = tmp_path / "constraints.txt"
    loose.write_text("numpy==2.4.6\ntensorflow_cpu>=2.21\n")
    expected = r"constraints.txt: line 'tensorflow_cpu>=2.21': expected an exact pin"
    with pytest.raises(SystemExit, match=expected):
        pins.write_pins("gpu", REPO / "pyproject.toml", loose, tmp_path / "out")


def test_cloudbuild_builds_and_pushes_every_image():
    build = yaml.safe_load((CONTAINERS / "cloudbuild.yaml").read_text())
    assert {"_REGISTRY", "_TAG"} <= set(build["substitutions"])
    built = {}
    for step in build["steps"]:
        args = step.get("args", [])
        if "build" in args:
            built[args[args.index("--file") + 1]] = args[args.index("--tag") + 1]
    assert set(built) == {f"containers/{path.name}" for path in DOCKERFILES}
    assert sorted(built.values()) == sorted(build["images"])
    for dockerfile, image in built.items():
        variant = Path(dockerfile).name.split(".")[0]
        assert image == f"${{_REGISTRY}}/histoxai-{variant}:${{_TAG}}"


def test_cloudbuild_runs_every_step_by_digest():
    """A tag can be moved to another image; a digest cannot. The digest is a substitution with no default."""
    build = yaml.safe_load((CONTAINERS / "cloudbuild.yaml").read_text())
    assert build["steps"]
    for step in build["steps"]:
        image, _, digest = step["name"].partition("@")
        assert image and "$" not in image, step["name"]
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest) or digest == "${_BUILDER_DIGEST}", step["name"]
    assert build["substitutions"]["_BUILDER_DIGEST"] == "", "no default digest: make build passes one"
    assert build["options"]["substitutionOption"] == "MUST_MATCH"


# --- locks: exact versions, every file checked by its sha256 --------------------------------------------
