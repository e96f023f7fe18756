"""The make targets and minikube scripts run for real against stand-ins for the tools they call.

PATH holds only a folder of stand-ins (tests/standins/standin linked as terraform, gcloud, minikube,
kubectl, curl, sleep, histoxai, docker, gsutil, helm), which record every call, and a folder of the few real
programs the scripts need (bash, make, coreutils): a tool without a stand-in is not found, so nothing reaches
a cloud or a cluster. The tests read back the calls: their order, arguments and environment, and that a
failure stops the rest. The install step is taken as done (`make -o .venv/.installed`); `make template` and
`make minikube-run` get the histoxai stand-in through BIN=, and its arguments are checked with the real
command-line parser.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STANDIN = REPO / "tests" / "standins" / "standin"
TOOLS = ("terraform", "gcloud", "minikube", "kubectl", "curl", "sleep", "histoxai", "docker", "gsutil",
         "helm")
REAL = ("bash", "sh", "env", "cat", "dirname", "basename", "mkdir", "rm", "seq", "date", "nohup", "make",
        "cp", "ls", "sed", "touch", "grep", "tr", "head")
RECORDED_ENV = "TF_WORKSPACE HISTOXAI_CPU_IMAGE HISTOXAI_GPU_IMAGE"
MAKE = ("make", "--no-print-directory", "-o", ".venv/.installed")  # the install step is taken as done
TF = ("-chdir=infra/terraform",)
KFP = "http://localhost:8888"


@dataclasses.dataclass(frozen=True)
class Call:
    tool: str
    args: tuple[str, ...]
    env: dict

    @property
    def words(self) -> str:
        return " ".join((self.tool, *self.args))


class Sandbox:
    """A PATH of stand-ins plus the real basics; runs commands there and reads back the stand-ins' calls."""

    def __init__(self, root: Path, without: tuple[str, ...] = ()):
        self.root, self.log = root, root / "calls.log"
        self.bin, real = root / "bin", root / "real"
        self.bin.mkdir(parents=True)
        real.mkdir()
        for tool in TOOLS:
            if tool not in without:
                (self.bin / tool).symlink_to(STANDIN)
        for program in REAL:
            (real / program).symlink_to(shutil.which(program))
        self.path = f"{self.bin}:{real}"
        self.state = root / "state"  # the minikube scripts' pid files and port-forward logs
        (root / "home").mkdir()

    def run(self, *command, cwd=REPO, input: str = "", **env) -> subprocess.CompletedProcess:
        environ = {"PATH": self.path, "HOME": str(self.root / "home"), "STANDIN_LOG": str(self.log),
                   "STANDIN_ENV": RECORDED_ENV, "MINIKUBE_STATE_DIR": str(self.state), **env}
        return subprocess.run([str(part) for part in command], cwd=cwd, env=environ, input=input,
                              capture_output=True, text=True, timeout=300)

    def calls(self, tool: str | None = None) -> list[Call]:
        found = []
        lines = self.log.read_text().split("\n")[:-1] if self.log.exists() else []  # not splitlines(): \x1d
        for line in lines:
            command, _, environment = line.partition("\x1f\x1d")
            name, *args = command.split("\x1f")
            env = dict(item.split("=", 1) for item in environment.split("\x1f") if item)
            if tool in (None, name):
                found.append(Call(name, tuple(args), env))
        return found


@pytest.fixture
def sandbox(tmp_path) -> Sandbox:
    return Sandbox(tmp_path / "sandbox")


def parses_as_histoxai(call: Call):
    """The real `histoxai` command line accepts the stand-in's arguments; the parsed namespace."""
    from histoxai import cli

    return cli.parse(list(call.args))


def sdk_version() -> str:
    return next(line.split("==")[1] for line in (REPO / "constraints.txt").read_text().splitlines()
                if line.startswith("kfp=="))


# --- make deploy (and make retrain-source, which it runs first) ------------------------------------------

def copy_for_wheel(destination: Path) -> Path:
    """The files `make retrain-source` reads, copied (setuptools writes build/ beside them)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("histoxai", "components", "pipelines", "app", "infra/retrain"):
        shutil.copytree(REPO / folder, destination / folder, ignore=ignore)
    for name in ("Makefile", "pyproject.toml", "constraints.txt", "README.md", "LICENSE",
                 "infra/terraform/envs/example.tfvars"):
        (destination / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, destination / name)
    (destination / ".venv").symlink_to(REPO / ".venv")
    return destination


def test_make_deploy_packs_the_function_source_then_inits_selects_and_applies(sandbox, tmp_path):
    tree = copy_for_wheel(tmp_path / "tree")
    stale = tree / "build" / "lib" / "histoxai" / "deleted_module.py"  # from an earlier build
    stale.parent.mkdir(parents=True)
    stale.write_text("")
    result = sandbox.run(*MAKE, "deploy", "env=example", "tag=abc123", cwd=tree, input="yes\n")
    assert result.returncode == 0, result.stderr
    source = tree / "build" / "retrain-source"
    wheel = [path.name for path in source.glob("histoxai-*.whl")]
    assert len(wheel) == 1 and sorted(p.name for p in source.iterdir()) == sorted(
        ["constraints.txt", "main.py", "requirements.txt", *wheel])
    assert (source / "requirements.txt").read_text() == f"-c constraints.txt\n./{wheel[0]}\n"
    assert (source / "main.py").read_text() == (REPO / "infra/retrain/main.py").read_text()
    packed = zipfile.ZipFile(source / wheel[0]).namelist()
    assert "histoxai/pipelines/retrain.py" in packed and "histoxai/deleted_module.py" not in packed

    assert [call.args for call in sandbox.calls()] == [
        (*TF, "init", "-input=false"),
        (*TF, "workspace", "select", "-or-create", "example"),
        (*TF, "apply", "-input=false", "-var-file=envs/example.tfvars", "-var", "image_tag=abc123",
         "-var", f"retrain_source_dir={source}")]
    # no -auto-approve: Terraform shows the plan and asks, and the answer typed to make reaches it
    assert sandbox.calls()[-1].env["answered"] == "yes"


@pytest.mark.parametrize(("arguments", "without", "message"), [
    (("env=nowhere",), (), "make deploy: infra/terraform/envs/nowhere.tfvars not found; copy "
                           "infra/terraform/envs/example.tfvars there and set project_id"),
    (("env=example",), ("terraform",), "make deploy: terraform not found; install Terraform >= 1.6"),
], ids=["no-tfvars", "no-terraform"])
def test_make_deploy_refuses_before_terraform_runs(tmp_path, arguments, without, message):
    sandbox = Sandbox(tmp_path / "sandbox", without=without)
    result = sandbox.run(*MAKE, "-o", "retrain-source", "deploy", "tag=abc123", *arguments)
    assert result.returncode == 2 and result.stderr.splitlines()[0] == message
    assert sandbox.calls() == []


@pytest.mark.parametrize("failing", ["init", "workspace select"])
def test_make_deploy_stops_when_a_terraform_step_fails(sandbox, failing):
    result = sandbox.run(*MAKE, "-o", "retrain-source", "deploy", "env=example", "tag=abc123",
                         STANDIN_FAIL=f"terraform {TF[0]} {failing}")
    assert result.returncode != 0 and "stand-in terraform: failing as the test asked" in result.stderr
    assert sandbox.calls()[-1].words.startswith(f"terraform {TF[0]} {failing}")
    assert not [call for call in sandbox.calls() if "apply" in call.args]


# --- make build and make template: Terraform's outputs feed Cloud Build and the compiled template -------

DIGEST = "sha256:" + "0123456789abcdef" * 4
REGISTRY = "europe-west4-docker.pkg.dev/my-proj/histoxai"


@pytest.mark.parametrize("given", [[], ["builder_digest=24.0.9"], ["builder_digest=sha256:abc"]])
def test_make_build_needs_a_builder_digest(sandbox, given):
    result = sandbox.run(*MAKE, "build", "env=dev", "tag=abc123", *given)
    assert result.returncode == 2
    first = result.stderr.splitlines()[0]
    assert first.startswith("make build: builder_digest=") and "sha256:<64 hex digits>" in first
    assert sandbox.calls() == []


def test_make_build_submits_cloudbuild_with_the_outputs_of_the_env(sandbox):
    result = sandbox.run(*MAKE, "build", "env=staging", "tag=abc123", f"builder_digest={DIGEST}")
    assert result.returncode == 0, result.stderr
    outputs = sandbox.calls("terraform")
    assert {call.args[:3] for call in outputs} == {(*TF, "output", "-raw")}
    assert {call.env["TF_WORKSPACE"] for call in outputs} == {"staging"}, "outputs of the env's workspace"
    (submit,) = sandbox.calls("gcloud")
    assert submit.args == (
        "builds", "submit", "--project", "my-proj", "--region", "europe-west4",
        "--config", "containers/cloudbuild.yaml",
        "--service-account",
        "projects/my-proj/serviceAccounts/histoxai-build@my-proj.iam.gserviceaccount.com",
        "--gcs-source-staging-dir", "gs://my-proj-histoxai-sources/cloudbuild",
        "--substitutions", f"_REGISTRY={REGISTRY},_TAG=abc123,_BUILDER_DIGEST={DIGEST}", ".")
    assert result.stdout.splitlines()[-2:] == [f"export HISTOXAI_CPU_IMAGE={REGISTRY}/histoxai-cpu:abc123",
                                               f"export HISTOXAI_GPU_IMAGE={REGISTRY}/histoxai-gpu:abc123"]


def test_make_build_submits_nothing_when_an_output_is_missing(sandbox):
    result = sandbox.run(*MAKE, "build", "env=dev", "tag=abc123", f"builder_digest={DIGEST}",
                         STANDIN_FAIL=f"terraform {TF[0]} output -raw docker_registry")
    assert result.returncode != 0 and "failing as the test asked" in result.stderr
    assert sandbox.calls("gcloud") == [] and not re.search("^export ", result.stdout, re.MULTILINE)


def test_make_template_compiles_with_the_tagged_images_to_the_template_uri(sandbox):
    result = sandbox.run(*MAKE, "template", "env=prod", "tag=abc123", f"BIN={sandbox.bin}")
    assert result.returncode == 0, result.stderr
    assert {call.env["TF_WORKSPACE"] for call in sandbox.calls("terraform")} == {"prod"}
    (compile_,) = sandbox.calls("histoxai")
    assert compile_.args == ("compile", "--out", "gs://my-proj-histoxai-sources/templates/histoxai.yaml")
    assert parses_as_histoxai(compile_).command == "compile"
    assert compile_.env == {"HISTOXAI_CPU_IMAGE": f"{REGISTRY}/histoxai-cpu:abc123",
                            "HISTOXAI_GPU_IMAGE": f"{REGISTRY}/histoxai-gpu:abc123"}


# --- minikube: up, run, down ---------------------------------------------------------------------------

MANIFESTS = "github.com/kubeflow/pipelines/manifests/kustomize"
HEALTH = ("-fsS", f"{KFP}/apis/v2beta1/healthz")


def script(name: str) -> tuple[str, str]:
    return "bash", f"infra/minikube/{name}"


def background_calls(sandbox: Sandbox, words: str, count: int) -> list[Call]:
    """The calls of processes the script left running in the background, once `count` of them are logged."""
    import time

    deadline = time.monotonic() + 30
    while len(found := [c for c in sandbox.calls() if c.words.startswith(words)]) < count:
        assert time.monotonic() < deadline, f"{count} calls {words!r} expected, {len(found)} logged"
        time.sleep(0.05)
    return found


@pytest.mark.parametrize("gpu", ["0", "1"])
def test_make_minikube_up_starts_installs_kfp_of_the_sdk_version_waits_and_forwards(sandbox, gpu):
    result = sandbox.run(*MAKE, "minikube-up", MINIKUBE_GPU=gpu)
    assert result.returncode == 0, result.stderr
    version = re.search(r"Installing Kubeflow Pipelines (\S+) \.\.\.", result.stdout).group(1)
    assert version.split(".")[:2] == sdk_version().split(".")[:2], "the KFP backend matches the kfp SDK"
    start = ("start", "--profile", "histoxai", "--cpus", "4", "--memory", "12g", "--disk-size", "60g")
    if gpu == "1":
        start += ("--driver", "docker", "--container-runtime", "docker", "--gpus", "all")
    forwards = background_calls(sandbox, "kubectl -n kubeflow port-forward", 2)
    assert {call.args[-2:] for call in forwards} == {("svc/ml-pipeline-ui", "8080:80"),
                                                     ("svc/ml-pipeline", "8888:8888")}
    assert [(call.tool, call.args) for call in sandbox.calls() if call not in forwards] == [
        ("minikube", start),
        ("kubectl", ("config", "use-context", "histoxai")),
        ("kubectl", ("apply", "-k", f"{MANIFESTS}/cluster-scoped-resources?ref={version}")),
        ("kubectl", ("wait", "--for", "condition=established", "--timeout=120s",
                     "crd/applications.app.k8s.io")),
        ("kubectl", ("apply", "-k", f"{MANIFESTS}/env/platform-agnostic?ref={version}")),
        ("kubectl", ("-n", "kubeflow", "wait", "--for=condition=Available", "deployment", "--all",
                     "--timeout=1200s")),
        ("curl", HEALTH), ("curl", HEALTH)]
    assert all((sandbox.state / f"{name}.pid").read_text().strip().isdigit() for name in ("ui", "api"))


def test_minikube_up_needs_its_tools(tmp_path):
    sandbox = Sandbox(tmp_path / "sandbox", without=("kubectl",))
    result = sandbox.run(*script("up.sh"))
    assert result.returncode == 2 and result.stderr == "up.sh: kubectl not found on PATH; install it first\n"
    assert sandbox.calls() == []


def test_minikube_up_stops_at_the_first_failing_step(sandbox):
    result = sandbox.run(*script("up.sh"), STANDIN_FAIL="kubectl wait --for condition=established")
    assert result.returncode == 1 and "failing as the test asked" in result.stderr
    assert sandbox.calls()[-1].words.startswith("kubectl wait --for condition=established")
    assert not [call for call in sandbox.calls() if "port-forward" in call.args or call.tool == "curl"]
    assert not sandbox.state.exists()


def test_minikube_up_says_where_to_look_when_the_api_never_answers(sandbox):
    result = sandbox.run(*script("up.sh"), STANDIN_FAIL="curl")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == \
        f"up.sh: the KFP API does not answer on port 8888; see {sandbox.state}/api.log"
    assert len(sandbox.calls("curl")) == 61 and len(sandbox.calls("sleep")) == 60  # a minute, then once more


@pytest.mark.parametrize("gpu", ["0", "1"])
def test_make_minikube_run_builds_in_the_cluster_then_compiles_and_submits(sandbox, tmp_path, gpu):
    out = tmp_path / "out"
    result = sandbox.run(*MAKE, "minikube-run", f"BIN={sandbox.bin}", f"OUT={out}", MINIKUBE_GPU=gpu,
                         SAMPLES_URI="gs://bucket/phantom")
    assert result.returncode == 0, result.stderr
    variants = ("cpu", "gpu") if gpu == "1" else ("cpu",)
    builds = [("minikube", ("-p", "histoxai", "image", "build", "-t", f"histoxai-{variant}:local", "-f",
                            f"containers/{variant}.Dockerfile", ".")) for variant in variants]
    calls = sandbox.calls()
    assert [(call.tool, call.args) for call in calls[:-2]] == [("curl", HEALTH), *builds]
    compile_, submit = calls[-2:]
    package = f"{out}/minikube/pipeline.yaml"
    assert compile_.args == ("compile", "--out", package, "--resources", "small", "--config", "demo",
                             "--accelerator-type", "nvidia.com/gpu" if gpu == "1" else "none")
    images = {"HISTOXAI_CPU_IMAGE": "histoxai-cpu:local",
              "HISTOXAI_GPU_IMAGE": "histoxai-gpu:local" if gpu == "1" else "histoxai-cpu:local"}
    assert compile_.env == submit.env == images
    submitted = parses_as_histoxai(submit)
    assert (submitted.kfp_host, submitted.package, submitted.samples_uri, submitted.samples) == (
        KFP, package, "gs://bucket/phantom", "3,4,5")
    assert submitted.param == ["patch_size=64", "explain_max_patches=48"]
    assert parses_as_histoxai(compile_).accelerator_type == compile_.args[-1]


@pytest.mark.parametrize(("fail", "samples", "message"), [
    ("curl", "gs://bucket/phantom", f"run.sh: no KFP API at {KFP}; run make minikube-up"),
    ("", "", "run.sh: set SAMPLES_URI to a gs:// folder of samples the cluster can read "
             "(see make minikube-run in docs/cloud.md)"),
], ids=["no-api", "no-samples"])
def test_minikube_run_refuses_without_an_api_or_samples(sandbox, fail, samples, message):
    result = sandbox.run(*script("run.sh"), HISTOXAI=str(sandbox.bin / "histoxai"), STANDIN_FAIL=fail,
                         SAMPLES_URI=samples)
    assert result.returncode == 2 and result.stderr.splitlines()[-1] == message
    assert sandbox.calls("histoxai") == []


@pytest.mark.parametrize(("env", "expected"), [
    ({}, ("delete", "--profile", "histoxai")),
    ({"KEEP_CLUSTER": "1"}, ("stop", "--profile", "histoxai")),
    ({"MINIKUBE_PROFILE": "other"}, ("delete", "--profile", "other")),
], ids=["delete", "keep-cluster", "other-profile"])
def test_make_minikube_down_ends_the_recorded_forwards_then_deletes_or_stops_its_profile(sandbox, env,
                                                                                         expected):
    sandbox.state.mkdir()
    forwards = {name: subprocess.Popen(["sleep", "120"]) for name in ("ui", "api")}
    bystander = subprocess.Popen(["sleep", "120"])  # not recorded: left alone
    try:
        for name, process in forwards.items():
            (sandbox.state / f"{name}.pid").write_text(f"{process.pid}\n")
        result = sandbox.run(*MAKE, "minikube-down", **env)
        assert result.returncode == 0, result.stderr
        assert [(call.tool, call.args) for call in sandbox.calls()] == [("minikube", expected)]
        assert [process.wait(timeout=30) for process in forwards.values()] == [-15, -15]
        assert list(sandbox.state.iterdir()) == [] and bystander.poll() is None
    finally:
        for process in (*forwards.values(), bystander):
            if process.poll() is None:
                process.kill()
                process.wait()
