"""Infrastructure checks: hadolint, image pins, Terraform (parse, references, checkov), shellcheck, make.

The linters live in .venv-tools (`make tools`, pinned in infra/requirements-tools.txt); the `tools`
fixture builds it when it is missing or stale, so these tests also run under a bare `pytest`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONTAINERS = REPO / "containers"
TERRAFORM = REPO / "infra" / "terraform"
MINIKUBE = REPO / "infra" / "minikube"
DOCKERFILES = sorted(CONTAINERS.glob("*.Dockerfile"))
SCRIPTS = sorted(MINIKUBE.glob("*.sh"))
TF_FILES = sorted(TERRAFORM.glob("*.tf"))


@pytest.fixture(scope="session")
def tools() -> Path:
    """bin/ of the tools environment, brought up to date by `make tools` (a no-op when it already is)."""
    subprocess.run(["make", "-s", "tools"], cwd=REPO, check=True)
    return REPO / ".venv-tools" / "bin"


def run(*command, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True, text=True)


def load_image_pins():
    spec = importlib.util.spec_from_file_location("image_pins", CONTAINERS / "image_pins.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    assert "--no-deps" in text and "-c /tmp/pins/constraints.txt" in text


def test_all_images_share_one_base():
    bases = {re.search(r"^ARG PYTHON_IMAGE=(\S+)$", path.read_text(), re.MULTILINE).group(1)
             for path in DOCKERFILES}
    assert len(bases) == 1


def test_gpu_image_swaps_tensorflow_and_cpu_images_do_not():
    assert "--variant gpu" in (CONTAINERS / "gpu.Dockerfile").read_text()
    for name in ("cpu.Dockerfile", "app.Dockerfile"):
        assert "--variant cpu" in (CONTAINERS / name).read_text()


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
    assert re.fullmatch(r"gcr\.io/cloud-builders/docker:\d+\.\d+\.\d+", build["substitutions"]["_BUILDER"])
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


# --- terraform ----------------------------------------------------------------------------------------

def parse_hcl(tools: Path, *files: Path) -> subprocess.CompletedProcess:
    """python-hcl2 (kept apart from checkov's fork, see infra/requirements-hcl2.txt) on `files`, as JSON."""
    script = ("import hcl2, json, sys\n"
              "assert hcl2.__version__.startswith('8.'), hcl2.__version__\n"
              "print(json.dumps({p: hcl2.load(open(p)) for p in sys.argv[1:]}, default=str))")
    env = {**os.environ, "PYTHONPATH": str(tools.parent / "hcl2")}
    return subprocess.run([str(tools / "python"), "-c", script, *map(str, files)],
                          capture_output=True, text=True, env=env)


def unquote(value):
    """python-hcl2 keeps HCL's quotes on names and string values; compare without them."""
    quoted = isinstance(value, str) and len(value) > 1 and value[0] == value[-1] == '"'
    return value[1:-1] if quoted else value


@pytest.fixture(scope="module")
def terraform(tools):
    """Every .tf file (and the example tfvars), parsed."""
    result = parse_hcl(tools, *TF_FILES, TERRAFORM / "envs" / "example.tfvars")
    assert result.returncode == 0, result.stderr
    return {Path(path).name: parsed for path, parsed in json.loads(result.stdout).items()}


def test_every_tf_file_parses(terraform):
    assert {path.name for path in TF_FILES} <= set(terraform)
    assert len(TF_FILES) >= 6


def test_hcl_parser_rejects_broken_terraform(tools, tmp_path):
    broken = tmp_path / "broken.tf"
    broken.write_text('resource "google_storage_bucket" "b" {\n  name = \n')
    assert parse_hcl(tools, broken).returncode != 0


def declared(terraform, block: str) -> dict[str, dict]:
    """name -> body of every `block` (variable, output) across the files."""
    return {unquote(name): body for parsed in terraform.values() for item in parsed.get(block, [])
            for name, body in item.items()}


def resource(terraform, kind: str, name: str) -> dict:
    """The body of resource "kind" "name"."""
    kind, name = f'"{kind}"', f'"{name}"'
    return next(item[kind][name] for parsed in terraform.values() for item in parsed.get("resource", [])
                if name in item.get(kind, {}))


def test_terraform_references_and_inputs_agree(terraform):
    variables = declared(terraform, "variable")
    used = {name for path in TF_FILES for name in re.findall(r"\bvar\.(\w+)", path.read_text())}
    assert used <= set(variables), f"undeclared variables: {sorted(used - set(variables))}"
    assert set(variables) - used == set(), f"unused variables: {sorted(set(variables) - used)}"
    example = {unquote(name) for name in terraform["example.tfvars"] if not name.startswith("__")}
    assert example <= set(variables)
    required = {name for name, body in variables.items() if "default" not in body}
    assert required and required <= example, "the example tfvars sets every required variable"


def test_makefile_reads_only_declared_outputs(terraform):
    outputs = set(declared(terraform, "output"))
    wanted = set(re.findall(r"\$\(TF_OUT\) (\w+)", (REPO / "Makefile").read_text()))
    assert wanted and wanted <= outputs, f"outputs the Makefile needs: {sorted(wanted - outputs)}"


def test_retrain_trigger_fires_on_samples_bucket_finalize(terraform):
    function = resource(terraform, "google_cloudfunctions2_function", "retrain")
    trigger = function["event_trigger"][0]
    assert unquote(trigger["event_type"]) == "google.cloud.storage.object.v1.finalized"
    assert trigger["event_filters"][0]["value"] == "${google_storage_bucket.samples.name}"
    assert function["build_config"][0]["entry_point"] == "${var.retrain_entry_point}"
    assert unquote(declared(terraform, "variable")["retrain_entry_point"]["default"]) == "on_sample_uploaded"
    # main.py, as the platform loads it, exposes the handler; the function gets what the handler reads.
    import importlib.util

    from histoxai.pipelines import retrain

    spec = importlib.util.spec_from_file_location("retrain_main", REPO / "infra/retrain/main.py")
    main = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(main)
    assert main.on_sample_uploaded is retrain.on_sample_uploaded
    given = set(function["service_config"][0]["environment_variables"])
    read = set(re.findall(r'env\.get\("(HISTOXAI_\w+)"', Path(retrain.__file__).read_text()))
    assert given == read - {"HISTOXAI_VERTEX_ENDPOINT"}  # the one setting left to its default


def test_buckets_are_uniform_private_and_versioned(terraform):
    for name in ("pipeline_root", "samples", "sources"):
        bucket = resource(terraform, "google_storage_bucket", name)
        assert bucket["uniform_bucket_level_access"] is True, name
        assert unquote(bucket["public_access_prevention"]) == "enforced", name
        assert bucket["versioning"][0]["enabled"] is True, name
        assert bucket.get("lifecycle_rule"), name


def test_no_lifecycle_rule_deletes_what_the_trigger_reads(terraform):
    """The sources bucket ages out build inputs; the pipeline template and the function's source stay."""
    kept = ("templates/histoxai.yaml", "functions/retrain-0.zip")
    for rule in resource(terraform, "google_storage_bucket", "sources")["lifecycle_rule"]:
        condition = rule["condition"][0]
        if unquote(rule["action"][0]["type"]) != "Delete" or "age" not in condition:
            continue  # noncurrent versions only
        prefixes = [unquote(p) for p in condition.get("matches_prefix", [])]
        assert prefixes, "an age rule on the whole sources bucket would delete the pipeline template"
        assert not any(name.startswith(prefix) for prefix in prefixes for name in kept), prefixes


def checkov(tools, directory: Path) -> dict:
    result = run(tools / "checkov", "--directory", directory, "--framework", "terraform",
                 "--skip-download", "--output", "json", cwd=directory)
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout)


def test_checkov_finds_nothing_unjustified(tools):
    report = checkov(tools, TERRAFORM)
    failed = [(check["check_id"], check["resource"]) for check in report["results"]["failed_checks"]]
    assert not failed, failed
    assert report["summary"]["passed"] >= 40 and report["summary"]["parsing_errors"] == 0
    for check in report["results"]["skipped_checks"]:
        assert len(check["check_result"].get("suppress_comment", "")) > 20, check["check_id"]


def test_checkov_flags_an_unsafe_bucket(tools, tmp_path):
    (tmp_path / "main.tf").write_text('resource "google_storage_bucket" "b" {\n'
                                      '  name     = "b"\n  location = "EU"\n}\n')
    failed = {check["check_id"] for check in checkov(tools, tmp_path)["results"]["failed_checks"]}
    assert {"CKV_GCP_29", "CKV_GCP_78"} <= failed  # uniform access, versioning


# --- minikube -----------------------------------------------------------------------------------------

def test_minikube_scripts_pass_shellcheck(tools):
    assert {path.name for path in SCRIPTS} >= {"up.sh", "run.sh", "down.sh"}
    result = run(tools / "shellcheck", "--external-sources", "--severity=style", *SCRIPTS)
    assert result.returncode == 0, result.stdout


def test_shellcheck_flags_an_unquoted_expansion(tools, tmp_path):
    script = tmp_path / "bad.sh"
    script.write_text('#!/usr/bin/env bash\nrm -rf $1/build\n')
    result = run(tools / "shellcheck", script)
    assert result.returncode != 0 and "SC2086" in result.stdout


def test_kfp_backend_matches_the_sdk():
    sdk = next(line.split("==")[1] for line in (REPO / "constraints.txt").read_text().splitlines()
               if line.startswith("kfp=="))
    backend = re.search(r'KFP_VERSION="\$\{KFP_VERSION:-([\d.]+)\}"', (MINIKUBE / "lib.sh").read_text())
    assert backend and backend.group(1).split(".")[:2] == sdk.split(".")[:2]
    up = (MINIKUBE / "up.sh").read_text()
    assert "env/platform-agnostic?ref=$KFP_VERSION" in up
    assert "cluster-scoped-resources?ref=$KFP_VERSION" in up


# --- make ---------------------------------------------------------------------------------------------

def make_dry_run(*arguments) -> str:
    result = run("make", "--dry-run", "--always-make", *arguments)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_make_deploy_applies_the_env_tfvars():
    commands = make_dry_run("deploy", "env=dev")
    assert "workspace select -or-create dev" in commands
    assert "apply -input=false -var-file=envs/dev.tfvars" in commands
    assert "build/retrain-source" in commands


def test_make_build_submits_cloudbuild_with_a_tag():
    commands = make_dry_run("build", "env=dev", "tag=abc123")
    assert "--config containers/cloudbuild.yaml" in commands and "_TAG=abc123" in commands


@pytest.mark.parametrize("target", ["minikube-up", "minikube-run", "minikube-down"])
def test_make_minikube_targets_run_their_script(target):
    assert f"infra/minikube/{target.split('-')[1]}.sh" in make_dry_run(target)


def test_tool_environment_and_local_terraform_state_are_ignored():
    ignored = (".venv-tools/bin/python", "infra/terraform/envs/dev.tfvars",
               "infra/terraform/terraform.tfstate")
    for path in ignored:
        assert run("git", "check-ignore", "-q", path).returncode == 0, path
    assert run("git", "check-ignore", "-q", "infra/terraform/envs/example.tfvars").returncode == 1
