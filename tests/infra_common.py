"""What the infrastructure tests share: the repository's paths and small helpers (their fixture, `tools`,
is in conftest.py)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONTAINERS = REPO / "containers"
TERRAFORM = REPO / "infra" / "terraform"
MINIKUBE = REPO / "infra" / "minikube"
DOCKERFILES = sorted(CONTAINERS.glob("*.Dockerfile"))
SCRIPTS = sorted(MINIKUBE.glob("*.sh"))
TF_FILES = sorted(TERRAFORM.glob("*.tf"))


def run(*command, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True, text=True)


def load_image_pins():
    spec = importlib.util.spec_from_file_location("image_pins", CONTAINERS / "image_pins.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pip_installs(text: str) -> list[str]:
    """Every `pip install` command in a Dockerfile's RUN lines or a make recipe, continuation lines joined."""
    commands = re.split(r"&&|\n|;", text.replace("\\\n", " "))
    return [" ".join(command.split()) for command in commands
            if re.search(r"\bpip install\b", command)]


def check_hashed_installs(installs: list[str], source: str) -> list[str]:
    """The lock files `installs` read; fails unless each one checks hashes or is the project's --no-deps."""
    locks = []
    for command in installs:
        if "--require-hashes" in command:
            named = re.findall(r"(?:^| )-r (\S+)", command)
            assert named and " -c " not in command, f"{source}: {command}"
            locks += named
        else:
            project = re.search(r" (?:-e )?\.$", command)
            assert project and "--no-deps" in command, f"{source}: installs without hashes: {command}"
    return locks


def make_dry_run(*arguments) -> str:
    result = run("make", "--dry-run", "--always-make", *arguments)
    assert result.returncode == 0, result.stderr
    return result.stdout
