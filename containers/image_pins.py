"""An image's pip inputs from the project's pins; the GPU image gets tensorflow[and-cuda] for tensorflow-cpu.

Writes into --out:
  requirements.txt  the project's build requirements and runtime dependencies (no dev extras), so the
                    project can then be installed with --no-deps --no-build-isolation
  constraints.txt   constraints.txt, exact versions for everything
For --variant gpu, `tensorflow-cpu` becomes `tensorflow[and-cuda]` in the requirements and the exact
`tensorflow_cpu==X` pin becomes `tensorflow==X`, every other pin unchanged. `make lock-hashes` compiles these
(for gpu with cuda-constraints.txt too) into containers/requirements-{cpu,gpu}-lock.txt, every file with its
sha256; an image installs that lock (a layer that changes only when the lock changes), then the project
itself with --no-deps.
Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

CPU_PACKAGE = "tensorflow-cpu"
GPU_REQUIREMENT = "tensorflow[and-cuda]"
NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
EXACT_PIN = re.compile(r"\s*[A-Za-z0-9][A-Za-z0-9._-]*\s*==\s*([^\s;#]+)\s*")


def canonical(name: str) -> str:
    """PEP 503 name normalisation: Foo_Bar.baz -> foo-bar-baz."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(line: str) -> str | None:
    """The canonical project name a requirement or pin line starts with; None for comments and options."""
    line = line.strip()
    if not line or line.startswith(("#", "-")):
        return None
    match = NAME.match(line)
    return canonical(match.group(1)) if match else None


def gpu_requirements(dependencies: list[str], source: str) -> list[str]:
    """The dependency list with tensorflow-cpu replaced by tensorflow[and-cuda] of the same specifier."""
    swapped, found = [], False
    for requirement in dependencies:
        match = NAME.match(requirement)
        if match and canonical(match.group(1)) == CPU_PACKAGE:
            rest = requirement[match.end():].strip()
            if rest.startswith("["):
                raise SystemExit(f"{source}: [project].dependencies: {requirement!r} has extras; expected "
                                 f"a plain '{CPU_PACKAGE}<specifier>' to swap for {GPU_REQUIREMENT}")
            swapped.append(f"{GPU_REQUIREMENT}{rest}")
            found = True
        else:
            swapped.append(requirement)
    if not found:
        raise SystemExit(f"{source}: [project].dependencies has no {CPU_PACKAGE} requirement to swap "
                         f"for {GPU_REQUIREMENT}")
    return swapped


def gpu_constraints(lines: list[str], source: str) -> list[str]:
    """Constraint lines with the exact tensorflow-cpu pin moved to tensorflow (same version)."""
    swapped, version = [], None
    for line in lines:
        name = requirement_name(line)
        if name == CPU_PACKAGE:
            pin = EXACT_PIN.fullmatch(line)
            if not pin:
                raise SystemExit(f"{source}: line {line.strip()!r}: expected an exact pin "
                                 f"'{CPU_PACKAGE}==<version>'")
            version = pin.group(1)
            swapped.append(f"tensorflow=={version}")
        elif name == "tensorflow":
            raise SystemExit(f"{source}: line {line.strip()!r}: pins tensorflow beside {CPU_PACKAGE}; "
                             "expected only the CPU package")
        else:
            swapped.append(line)
    if version is None:
        raise SystemExit(f"{source}: no exact '{CPU_PACKAGE}==<version>' pin found")
    return swapped


def write_pins(variant: str, pyproject: Path, constraints: Path, out: Path) -> tuple[Path, Path]:
    """Write requirements.txt and constraints.txt for a `cpu` or `gpu` image into `out`."""
    if variant not in ("cpu", "gpu"):
        raise SystemExit(f"--variant: {variant!r}; expected 'cpu' or 'gpu'")
    try:
        metadata = tomllib.loads(pyproject.read_text())
        dependencies = metadata["build-system"]["requires"] + metadata["project"]["dependencies"]
    except (OSError, tomllib.TOMLDecodeError, KeyError) as err:
        raise SystemExit(f"{pyproject}: cannot read [build-system].requires and [project].dependencies "
                         f"({err!r})") from err
    try:
        pins = constraints.read_text().splitlines()
    except OSError as err:
        raise SystemExit(f"{constraints}: cannot read ({err})") from err
    if variant == "gpu":
        dependencies = gpu_requirements(dependencies, str(pyproject))
        pins = gpu_constraints(pins, str(constraints))
    out.mkdir(parents=True, exist_ok=True)
    requirements_path, constraints_path = out / "requirements.txt", out / "constraints.txt"
    requirements_path.write_text("\n".join(dependencies) + "\n")
    constraints_path.write_text("\n".join(pins) + "\n")
    return requirements_path, constraints_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--variant", choices=("cpu", "gpu"), required=True)
    parser.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    parser.add_argument("--constraints", type=Path, default=Path("constraints.txt"))
    parser.add_argument("--out", type=Path, required=True, help="folder to write the two files into")
    args = parser.parse_args(argv)
    for path in write_pins(args.variant, args.pyproject, args.constraints, args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
