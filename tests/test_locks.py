"""Hashed locks: every package pinned with its hashes, the locked versions equal to the pins, and the
make targets that install and rewrite them."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from tests.infra_common import (
    CONTAINERS,
    REPO,
    check_hashed_installs,
    load_image_pins,
    make_dry_run,
    pip_installs,
    run,
)

LOCK_ENTRY = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)"
                        r"(?P<hashes>(?:\s+--hash=sha256:[0-9a-f]{64})+)")
LOCKS = (  # each with what it locks (test_locked_versions_are_the_pinned_versions)
    "requirements-lock.txt",  # constraints.txt: make install
    "requirements-build-lock.txt",  # pip, setuptools, wheel: installed first everywhere
    "requirements-uv-lock.txt",  # uv, which writes the locks (make lock-hashes)
    "containers/requirements-cpu-lock.txt",  # the cpu and app images' runtime dependencies
    "containers/requirements-gpu-lock.txt",  # the same with tensorflow and cuda-constraints.txt
    "infra/requirements-tools-lock.txt",  # infra/requirements-tools.txt plus pip: make tools
    "infra/requirements-hcl2-lock.txt",  # infra/requirements-hcl2.txt
)


def read_lock(text: str) -> tuple[dict[str, str], list[str]]:
    """A hashed lock's entries (canonical name -> version) and every entry that is not `name==version`
    with at least one sha256 (a missing hash, a range, an option, a URL, a duplicate)."""
    canonical = load_image_pins().canonical
    entries, problems = {}, []
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = LOCK_ENTRY.fullmatch(line)
        if not match:
            problems.append(line.split(" --hash")[0].strip()[:100])
            continue
        name = canonical(match["name"])
        if name in entries:
            problems.append(f"{name} twice")
        entries[name] = match["version"]
    return entries, problems


def read_pins(path: Path) -> dict[str, str]:
    """canonical name -> version of a file of exact pins (constraints.txt, infra/requirements-tools.txt)."""
    pins = load_image_pins()
    found = {}
    for line in path.read_text().splitlines():
        name = pins.requirement_name(line)
        if name:
            found[name] = pins.EXACT_PIN.fullmatch(line).group(1)
    return found


def differences(locked: dict[str, str], expected: dict[str, str]) -> list[str]:
    """How a lock's versions differ from the pins it must carry."""
    return sorted(f"{name}: locked {locked.get(name)}, pinned {expected.get(name)}"
                  for name in set(locked) | set(expected) if locked.get(name) != expected.get(name))


def makefile_variable(name: str) -> str:
    return re.search(rf"^{name} := (\S+)$", (REPO / "Makefile").read_text(), re.MULTILINE).group(1)


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_lock_pins_every_package_with_hashes(lock):
    entries, problems = read_lock((REPO / lock).read_text())
    assert entries, f"{lock}: no entries"
    assert not problems, f"{lock}: entries without an exact version and a sha256: {problems}"


def test_locked_versions_are_the_pinned_versions():
    constraints = read_pins(REPO / "constraints.txt")
    pip = {"pip": makefile_variable("PIP_VERSION")}
    locked = {lock: read_lock((REPO / lock).read_text())[0] for lock in LOCKS}

    assert not differences(locked["requirements-lock.txt"], constraints)
    build = locked["requirements-build-lock.txt"]
    assert {"pip", "setuptools", "wheel"} <= set(build)
    assert not differences(build, {**{name: constraints[name] for name in build if name != "pip"}, **pip})
    tools = read_pins(REPO / "infra" / "requirements-tools.txt")
    assert not differences(locked["infra/requirements-tools-lock.txt"], {**tools, **pip})
    assert not differences(locked["infra/requirements-hcl2-lock.txt"],
                           read_pins(REPO / "infra" / "requirements-hcl2.txt"))
    assert set(locked["requirements-uv-lock.txt"]) == {"uv"}

    # The images: the runtime dependencies (no dev tools) at constraints.txt's versions; the GPU image
    # has tensorflow for tensorflow-cpu, same version, and exactly the CUDA wheels of cuda-constraints.txt.
    pins = load_image_pins()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    cpu = locked["containers/requirements-cpu-lock.txt"]
    assert not differences(cpu, {name: constraints[name] for name in cpu})
    direct = pyproject["build-system"]["requires"] + pyproject["project"]["dependencies"]
    assert {pins.requirement_name(requirement) for requirement in direct} <= set(cpu)
    dev = {pins.requirement_name(requirement)
           for requirement in pyproject["project"]["optional-dependencies"]["dev"]}
    assert not dev & set(cpu), "dev tools stay out of the images"
    gpu_expected = {name: version for name, version in cpu.items() if name != "tensorflow-cpu"}
    gpu_expected["tensorflow"] = cpu["tensorflow-cpu"]
    gpu_expected.update(read_pins(CONTAINERS / "cuda-constraints.txt"))
    assert not differences(locked["containers/requirements-gpu-lock.txt"], gpu_expected)


def test_lock_checks_catch_a_missing_hash_and_a_drifted_version():
    text = (REPO / "requirements-lock.txt").read_text()
    constraints = read_pins(REPO / "constraints.txt")
    version = constraints["numpy"]
    entry = re.search(rf"^numpy=={re.escape(version)} \\\n(?:    --hash=\S+(?: \\)?\n)+", text, re.MULTILINE)
    assert entry, "numpy's entry, with its hashes"

    unhashed = text.replace(entry.group(0), f"numpy=={version}\n")
    entries, problems = read_lock(unhashed)
    assert problems == [f"numpy=={version}"] and "numpy" not in entries

    drifted = text.replace(f"numpy=={version} ", "numpy==1.0.0 ")
    assert differences(read_lock(drifted)[0], constraints) == [f"numpy: locked 1.0.0, pinned {version}"]
    loose = text.replace(f"numpy=={version} ", "numpy>=1 ")
    assert read_lock(loose)[1] == ["numpy>=1"]


def test_make_install_and_tools_install_by_hash():
    commands = make_dry_run("install", "tools")
    assert "constraints.txt" not in "\n".join(pip_installs(commands)), "no hash-less constraint installs"
    locks = check_hashed_installs(pip_installs(commands), "Makefile")
    assert locks == ["requirements-build-lock.txt", "requirements-lock.txt",
                     "infra/requirements-tools-lock.txt", "infra/requirements-hcl2-lock.txt"]
    project = [command for command in pip_installs(commands) if "--require-hashes" not in command]
    assert project == [".venv/bin/python -m pip install -q --no-deps --no-build-isolation -e ."]
    makefile = (REPO / "Makefile").read_text()  # the stamps rebuild when a lock changes
    stamp_rules = dict(re.findall(r"^\$\((\w*STAMP)\): (.*)$", makefile, re.MULTILINE))
    assert {"requirements-build-lock.txt", "requirements-lock.txt"} <= set(stamp_rules["STAMP"].split())
    assert {"infra/requirements-tools-lock.txt", "infra/requirements-hcl2-lock.txt"} <= \
        set(stamp_rules["TOOLS_STAMP"].split())


def test_make_lock_rewrites_every_lock():
    commands = make_dry_run("lock-hashes")
    written = set(re.findall(r"uv pip compile .*? -o (\S+)", commands))
    assert written == set(LOCKS)
    assert "--generate-hashes" in commands and "--no-config" in commands
    assert "lock-hashes" in make_dry_run("lock")
    result = run("make", "lock-hashes", "uv=latest")
    assert result.returncode == 2
    assert result.stderr.splitlines()[0].startswith("make lock-hashes: uv=latest is not a version")
