"""Infrastructure checks: hashed locks, hadolint, image pins, Terraform (parse, references, IAM, checkov),
shellcheck, make (dry runs; tests/test_infra_scripts.py runs the deploy, build and minikube
targets and scripts against stand-in tools).

The linters live in .venv-tools (`make tools`, pinned in infra/requirements-tools.txt and installed by hash
from infra/requirements-tools-lock.txt); the `tools`
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


def test_all_images_share_one_base():
    bases = {re.search(r"^ARG PYTHON_IMAGE=(\S+)$", path.read_text(), re.MULTILINE).group(1)
             for path in DOCKERFILES}
    assert len(bases) == 1


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
    passed = set(re.findall(r"-var (\w+)=", (REPO / "Makefile").read_text()))  # by make deploy
    assert required and required <= example | passed, "every required variable is set by the example " \
                                                      "tfvars or by make deploy"


def test_image_tag_is_required_and_never_latest(terraform):
    """A moving tag would let one configuration run different images: no default, and `latest` refused."""
    image_tag = declared(terraform, "variable")["image_tag"]
    assert "default" not in image_tag
    condition = image_tag["validation"][0]["condition"]
    assert 'var.image_tag != "latest"' in condition
    pattern = re.search(r'regex\("(.+?)", var\.image_tag\)', condition).group(1)
    for tag in ("50c3e680428f", "v1.2.3", "dev"):
        assert re.fullmatch(pattern, tag), tag
    for tag in ("", "a b", "-x", "x" * 129):
        assert not re.fullmatch(pattern, tag), tag


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


def hcl_string(value: str) -> str:
    """An HCL string as python-hcl2 gives it (quoted, with escapes) as its text."""
    return re.sub(r'\\(["\\])', r"\1", unquote(value))


def condition_grants(expression: str, name: str) -> bool:
    """Whether an IAM condition of the forms used here (resource.name == "X" or
    resource.name.startsWith("X")) holds for the object resource `name`."""
    equals = re.fullmatch(r'resource\.name == "([^"]+)"', expression)
    if equals:
        return name == equals.group(1)
    prefix = re.fullmatch(r'resource\.name\.startsWith\("([^"]+)"\)', expression)
    if prefix:
        return name.startswith(prefix.group(1))
    raise AssertionError(f"condition not understood by this test: {expression}")


def test_retrain_account_reads_samples_and_writes_only_the_registry(terraform):
    """The retraining function can read every upload but not change or delete one: its writing role
    holds for the sample registry object alone (create + delete: a rewrite replaces the object)."""
    member = "${google_service_account.retrain.member}"
    bindings = [(kind, body) for parsed in terraform.values() for item in parsed.get("resource", [])
                for kind, named in item.items() for body in named.values()
                if body.get("member") == member or member in body.get("members", [])]
    kinds = {unquote(kind) for kind, _ in bindings}
    assert kinds <= {"google_project_iam_member", "google_storage_bucket_iam_member",
                     "google_service_account_iam_member"}, kinds
    project_roles = {role for kind, body in bindings if unquote(kind) == "google_project_iam_member"
                     for role in re.findall(r"roles/[\w.]+", body["role"] + body.get("for_each", ""))}
    assert not {role for role in project_roles if role.startswith("roles/storage.")}, project_roles

    locals_ = {name: value for parsed in terraform.values() for block in parsed.get("locals", [])
               for name, value in block.items()}
    bucket, registry = "my-proj-histoxai-samples", hcl_string(locals_["registry_object"])
    assert hcl_string(locals_["samples_uri"]) == "gs://${google_storage_bucket.samples.name}"
    function = resource(terraform, "google_cloudfunctions2_function", "retrain")
    assert function["service_config"][0]["environment_variables"]["HISTOXAI_SAMPLES_BUCKET"] == \
        "${local.samples_uri}", "the trigger's samples URI is the bucket root the condition names"
    pipelines = "\n".join(path.read_text() for path in (REPO / "pipelines").glob("*.py"))
    assert re.search(rf'^REGISTRY = "{re.escape(registry)}"$', pipelines, re.MULTILINE), \
        "the Terraform names the registry object the trigger writes"

    def objects(*names):
        return [f"projects/_/buckets/{bucket}/objects/{name}" for name in names]

    registry_object = objects(registry)[0]
    uploads = objects("17/READY", "3/coreg_fine/ver1/HE.mat", "3/cell_density/QuPath/measurements.tsv",
                      f"{registry}.tmp", f"17/{registry}", "other")
    uploads.append(f"projects/_/buckets/other-bucket/objects/{registry}")
    on_samples = [body for _, body in bindings
                  if body.get("bucket") == "${google_storage_bucket.samples.name}"]
    assert on_samples
    writes_registry = False
    for body in on_samples:
        role = unquote(body["role"])
        if not body.get("condition"):
            assert role == "roles/storage.objectViewer", f"{role} on every object of the samples bucket"
            continue
        expression = hcl_string(body["condition"][0]["expression"])
        expression = expression.replace("${google_storage_bucket.samples.name}", bucket)
        expression = expression.replace("${local.registry_object}", registry)
        assert not [name for name in uploads if condition_grants(expression, name)], (role, expression)
        if condition_grants(expression, registry_object):
            assert role in ("roles/storage.objectUser", "roles/storage.objectAdmin"), role
            writes_registry = True
    assert writes_registry, "the registry object must be writable (create and delete)"


def test_condition_check_refuses_a_bucket_wide_grant():
    everything = 'resource.name.startsWith("projects/_/buckets/b/objects/")'
    assert condition_grants(everything, "projects/_/buckets/b/objects/17/READY")
    only = 'resource.name == "projects/_/buckets/b/objects/histoxai-registry.json"'
    assert not condition_grants(only, "projects/_/buckets/b/objects/17/READY")
    with pytest.raises(AssertionError, match="not understood"):
        condition_grants("true", "projects/_/buckets/b/objects/17/READY")


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


# --- make ---------------------------------------------------------------------------------------------

def make_dry_run(*arguments) -> str:
    result = run("make", "--dry-run", "--always-make", *arguments)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_tool_environment_and_local_terraform_state_are_ignored():
    ignored = (".venv-tools/bin/python", ".venv-lock/bin/uv", "build/lock/cpu/requirements.txt",
               "infra/terraform/envs/dev.tfvars",
               "infra/terraform/terraform.tfstate")
    for path in ignored:
        assert run("git", "check-ignore", "-q", path).returncode == 0, path
    assert run("git", "check-ignore", "-q", "infra/terraform/envs/example.tfvars").returncode == 1
