"""Infrastructure checks: Terraform (parse, references, IAM, checkov), shellcheck, make (dry runs;
tests/test_infra_scripts.py runs the deploy, build and minikube targets and scripts against stand-in
tools). Containers and locks: tests/test_containers.py, tests/test_locks.py."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.infra_common import REPO, SCRIPTS, TERRAFORM, TF_FILES, run

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

def test_tool_environment_and_local_terraform_state_are_ignored():
    ignored = (".venv-tools/bin/python", ".venv-lock/bin/uv", "build/lock/cpu/requirements.txt",
               "infra/terraform/envs/dev.tfvars",
               "infra/terraform/terraform.tfstate")
    for path in ignored:
        assert run("git", "check-ignore", "-q", path).returncode == 0, path
    assert run("git", "check-ignore", "-q", "infra/terraform/envs/example.tfvars").returncode == 1
