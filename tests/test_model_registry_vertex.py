"""The Vertex AI Model Registry backend (histoxai/model_registry/vertex.py) against a local stand-in.

The real aiplatform client sends its requests over REST to a FakeService that keeps models, versions,
aliases and labels in memory as Vertex AI would (an upload's operation is done at once); the version
files go to the GCS emulator. The tests read the requests that arrived and what the registry reports.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re

import pytest

from histoxai import storage
from histoxai.errors import InputError
from histoxai.model_registry import CHAMPION, MANUAL, SAVED_MODEL_DIR, VERSION_FILES, open_registry
from histoxai.model_registry.vertex import VertexRegistry
from tests.fake_service import FakeService
from tests.vertex_recorder import service_account_key

PROJECT, REGION = "histoxai-test", "europe-west4"
NAME = "histoxai-multitask"
LOCATION = f"projects/123/locations/{REGION}"  # what Vertex AI answers: the project number
MODELS = r"/v1/projects/[^/]+/locations/[^/]+/models"
VERSIONED = r"([\w-]+)(?:(?:@|%40)([\w-]+))?"
DENIED = "denied-model"


def _error(code: int, status: str, message: str):
    return code, {"error": {"code": code, "status": status, "message": message}}


class FakeModelRegistry:
    """Vertex AI's ModelService as far as the registry uses it, with the state in dicts."""

    def __init__(self):
        self.models: dict[str, dict] = {}  # id -> {"displayName", "versions": {n: version}}
        self.ids = itertools.count(9001)
        self.operations = itertools.count(1)
        self.race_first_upload = False  # a test sets it: the next first upload meets a model made meanwhile
        self.service = FakeService({
            ("POST", "/token"): lambda m, b, q: {"access_token": "t", "expires_in": 3600,
                                                 "token_type": "Bearer"},
            ("POST", rf"{MODELS}:upload"): self.upload,
            ("GET", MODELS): self.list,
            ("GET", rf"{MODELS}/([\w-]+):listVersions"): self.list_versions,
            ("POST", rf"{MODELS}/{VERSIONED}:mergeVersionAliases"): self.merge_aliases,
            ("PATCH", rf"{MODELS}/{VERSIONED}"): self.update,
            ("GET", rf"{MODELS}/{VERSIONED}"): self.get,
        })
        self.url = self.service.url

    # --- state ---
    def add(self, model_id: str, display_name: str, body: dict) -> dict:
        model = self.models.setdefault(model_id, {"displayName": display_name, "versions": {}})
        number = len(model["versions"]) + 1
        aliases = list(body.get("versionAliases") or [])
        if number == 1 and "default" not in aliases:
            aliases.append("default")  # a model's first version is its default
        for other in model["versions"].values():  # an alias names one version of a model
            other["versionAliases"] = [a for a in other["versionAliases"] if a not in aliases]
        model["versions"][number] = {
            "name": f"{LOCATION}/models/{model_id}", "versionId": str(number), "displayName": display_name,
            "artifactUri": body.get("artifactUri", ""), "labels": dict(body.get("labels") or {}),
            "versionAliases": aliases, "versionDescription": body.get("versionDescription", ""),
            "containerSpec": body.get("containerSpec", {}),
            "versionCreateTime": (dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
                                  + dt.timedelta(hours=number)).isoformat().replace("+00:00", "Z")}
        return model["versions"][number]

    def version(self, model_id: str, which: str | None):
        model = self.models.get(model_id)
        if model is None:
            return None
        which = which or "default"
        for number, version in model["versions"].items():
            if str(number) == which or which in version["versionAliases"]:
                return version
        return None

    # --- routes ---
    def upload(self, match, body, query):
        model = body["model"]
        parent = body.get("parentModel")
        if parent:
            model_id = parent.rsplit("/", 1)[-1]
            if model_id not in self.models:
                return _error(404, "NOT_FOUND", f"Model {parent} not found")
        else:
            model_id = body.get("modelId") or str(next(self.ids))
            if self.race_first_upload:  # another registration creates the model first
                self.race_first_upload = False
                self.add(model_id, model["displayName"], {**model, "versionAliases": []})
            if model_id in self.models:
                return _error(409, "ALREADY_EXISTS", f"Model {model_id} already exists")
        version = self.add(model_id, model["displayName"], model)
        response = {"@type": "type.googleapis.com/google.cloud.aiplatform.v1.UploadModelResponse",
                    "model": f"{LOCATION}/models/{model_id}", "modelVersionId": version["versionId"]}
        return {"name": f"{LOCATION}/operations/{next(self.operations)}", "done": True, "response": response}

    def list(self, match, body, query):
        wanted = (query.get("filter") or [""])[0]
        found = [self.version(model_id, None) for model_id in self.models]
        display = re.fullmatch(r'display_name="(.*)"', wanted)
        label = re.fullmatch(r'labels\.(\w+)="(.*)"', wanted)
        if display:
            found = [v for v in found if v["displayName"] == display.group(1)]
        elif label:
            found = [v for v in found if v["labels"].get(label.group(1)) == label.group(2)]
        elif wanted:
            return _error(400, "INVALID_ARGUMENT", f"filter {wanted} not understood")
        return {"models": found}

    def list_versions(self, match, body, query):
        model = self.models.get(match.group(1))
        if model is None:
            return _error(404, "NOT_FOUND", f"Model {match.group(1)} not found")
        return {"models": list(model["versions"].values())}

    def get(self, match, body, query):
        if match.group(1) == DENIED:
            return _error(403, "PERMISSION_DENIED", "Permission 'aiplatform.models.get' denied")
        version = self.version(match.group(1), match.group(2))
        if version is None:
            return _error(404, "NOT_FOUND", f"Model {match.group(0)} not found")
        return version

    def merge_aliases(self, match, body, query):
        target = self.version(match.group(1), match.group(2))
        if target is None or not match.group(2).isdigit():
            return _error(404, "NOT_FOUND", f"Model version {match.group(0)} not found")
        adding = [a for a in body["versionAliases"] if not a.startswith("-")]
        for other in self.models[match.group(1)]["versions"].values():
            other["versionAliases"] = [a for a in other["versionAliases"] if a not in adding]
        removing = {a[1:] for a in body["versionAliases"] if a.startswith("-")}
        target["versionAliases"] = [a for a in target["versionAliases"] if a not in removing] + adding
        return target

    def update(self, match, body, query):
        target = self.version(match.group(1), match.group(2))
        if target is None or not match.group(2):
            return _error(400, "FAILED_PRECONDITION", "expected a version name (ID@VERSION)")
        if query.get("updateMask") != ["labels"]:
            return _error(400, "INVALID_ARGUMENT", f"update mask {query.get('updateMask')}")
        target["labels"] = dict(body.get("labels") or {})
        return target


@pytest.fixture
def vertex(tmp_path, monkeypatch, gcs_emulator):
    fake = FakeModelRegistry()
    key = service_account_key(tmp_path / "key.json", f"{fake.url}/token")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    monkeypatch.delenv("HISTOXAI_MODEL_STAGING", raising=False)
    yield fake
    fake.service.close()


def _registry(vertex, gcs_bucket, **extra) -> VertexRegistry:
    return VertexRegistry(PROJECT, REGION, api_endpoint=vertex.url, staging_uri=f"{gcs_bucket}/models",
                          **extra)


@pytest.fixture
def version_dir(tmp_path):
    """A version folder as the register step builds it (the files' content does not matter here)."""
    folder = tmp_path / "version"
    for index, file in enumerate(VERSION_FILES):
        (folder / file).parent.mkdir(parents=True, exist_ok=True)
        (folder / file).write_bytes(f"{file} {index}\n".encode())
    (folder / SAVED_MODEL_DIR / "variables").mkdir(parents=True)
    (folder / SAVED_MODEL_DIR / "saved_model.pb").write_bytes(b"graph")
    (folder / SAVED_MODEL_DIR / "variables" / "variables.index").write_bytes(b"index")
    return folder


def _uploads(vertex) -> list[dict]:
    return [r["body"] for r in vertex.service.find("POST", rf"{MODELS}:upload")]


LABELS = {"config_hash": "3f9a0c2b7d1e", "code_version": "0.1.0+g1a2b3c4", "training_samples": "3,4,5"}


def test_register_versions_and_the_champion(vertex, gcs_bucket, version_dir, tmp_path):
    registry = _registry(vertex, gcs_bucket)
    vertex.add("4242", "someone-elses-model", {"labels": {"team": "other"}})  # not listed by names()
    record = {"run": "Run-7", "verdict": "promoted", "samples": ["3", "4", "5"], "scores": {"MD": 0.61}}

    first = registry.register(NAME, version_dir, labels=LABELS, record=record, promote=True)
    (upload,) = _uploads(vertex)
    assert "parentModel" not in upload and upload["modelId"] == NAME  # the first version creates the model
    model = upload["model"]
    assert model["displayName"] == NAME and sorted(model["versionAliases"]) == [CHAMPION, "default"]
    assert model["containerSpec"]["imageUri"] == \
        "europe-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest"
    assert model["labels"] == {"config_hash": "3f9a0c2b7d1e", "code_version": "0-1-0-g1a2b3c4",
                               "training_samples": "3-4-5", "verdict": "promoted", "run": "run-7",
                               "managed_by": "histoxai"}
    assert re.fullmatch(rf"{gcs_bucket}/models/{NAME}/[0-9a-f]{{32}}", first.uri)
    assert model["artifactUri"] == f"{first.uri}/{SAVED_MODEL_DIR}"
    assert storage.exists(f"{first.uri}/{SAVED_MODEL_DIR}/variables/variables.index")
    assert (first.version, first.aliases, first.record) == (1, (CHAMPION,), record)
    assert first.resource_name == f"{LOCATION}/models/{NAME}@1"

    # not promoted: a second version of the same model; the champion stays where it was
    second = registry.register(NAME, version_dir, labels=LABELS, record={**record, "run": "run-8",
                                                                         "verdict": "not-promoted"},
                               promote=False)
    upload = _uploads(vertex)[-1]
    assert upload["parentModel"] == f"{LOCATION}/models/{NAME}" and "modelId" not in upload
    assert not upload["model"].get("versionAliases")  # neither champion nor default
    assert second.version == 2 and not second.champion and second.uri != first.uri
    assert registry.champion(NAME).version == 1 and registry.get(NAME, CHAMPION).version == 1
    assert vertex.version(NAME, None)["versionId"] == "1"  # still the default version

    # promoted: champion and default version move in the same upload
    third = registry.register(NAME, version_dir, labels=LABELS, record={**record, "run": "run-9"},
                              promote=True)
    assert sorted(_uploads(vertex)[-1]["model"]["versionAliases"]) == [CHAMPION, "default"]
    assert third.champion and registry.get(NAME, CHAMPION).version == 3
    assert vertex.version(NAME, None)["versionId"] == "3"
    versions = registry.versions(NAME)
    assert [(v.version, v.aliases) for v in versions] == [(1, ()), (2, ()), (3, (CHAMPION,))]
    assert [v.record["run"] for v in versions] == ["Run-7", "run-8", "run-9"]
    assert versions[0].created < versions[2].created
    assert registry.get(NAME, "v2").record["verdict"] == "not-promoted"
    assert registry.names() == [NAME]

    # by hand: the champion alias and the default version move together; the verdict becomes manual
    moved = registry.set_champion(NAME, 2, reason="Pathologist review: v3 misses necrosis")
    (merge,) = vertex.service.find("POST", rf"{MODELS}/{NAME}(@|%40)2:mergeVersionAliases")
    assert sorted(merge["body"]["versionAliases"]) == [CHAMPION, "default"]
    assert moved.champion and moved.record["verdict"] == MANUAL
    assert moved.record["reason"] == "Pathologist review: v3 misses necrosis"
    assert moved.labels["verdict"] == MANUAL
    assert moved.labels["reason"] == "pathologist-review-v3-misses-necrosis"
    assert registry.get(NAME, 3).aliases == () and vertex.version(NAME, None)["versionId"] == "2"
    assert registry.get(NAME, 2).record["verdict"] == MANUAL  # record.json was rewritten
    (patch,) = vertex.service.find("PATCH", rf"{MODELS}/{NAME}(@|%40)2")
    assert patch["body"]["labels"]["config_hash"] == "3f9a0c2b7d1e"  # the other labels kept

    # rollback: back to the newest earlier version that was champion once (v1, promoted)
    assert registry.rollback(NAME, reason="v2 drifted").version == 1
    assert registry.champion(NAME).version == 1 and registry.get(NAME, 1).record["verdict"] == MANUAL

    dest = registry.fetch(registry.get(NAME, CHAMPION), tmp_path / "fetched")
    for file in VERSION_FILES:
        assert (dest / file).read_bytes() == (version_dir / file).read_bytes()


def test_a_first_registration_that_loses_the_race_becomes_version_2(vertex, gcs_bucket, version_dir):
    """Two first registrations at once: Vertex answers the second's create with a real HTTP 409
    ALREADY_EXISTS; it becomes a version of the model the other created, not an error."""
    vertex.race_first_upload = True
    registered = _registry(vertex, gcs_bucket).register(NAME, version_dir, labels=LABELS,
                                                        record={"run": "r"}, promote=False)
    first, second = _uploads(vertex)
    assert first["modelId"] == NAME and "parentModel" not in first
    assert second["parentModel"].endswith(f"/models/{NAME}") and registered.version == 2


def test_missing_models_versions_and_settings_are_one_line(vertex, gcs_bucket, version_dir, monkeypatch,
                                                           tmp_path):
    registry = _registry(vertex, gcs_bucket)
    assert registry.versions("nonesuch") == [] and registry.champion("nonesuch") is None
    registry.register(NAME, version_dir, labels={}, record={"verdict": "promoted"}, promote=False)
    assert registry.champion(NAME) is None  # first version: the default, but no champion unless promoted
    vertex.add(DENIED, DENIED, {"labels": {}})

    cases = [
        (lambda: registry.get("nonesuch", 1),
         f"model nonesuch: not in the registry vertex://{PROJECT}/{REGION} (it has {NAME})"),
        (lambda: registry.get(NAME, 7), f"model {NAME}@7: no such version or alias in "
                                        f"vertex://{PROJECT}/{REGION}; it has versions 1"),
        (lambda: registry.get(NAME, CHAMPION), f"model {NAME}@{CHAMPION}: no such version or alias"),
        (lambda: registry.set_champion(NAME, 4, reason="x"), f"model {NAME}@4: no such version"),
        (lambda: registry.rollback(NAME, reason="x"), f"{NAME}: no champion to roll back from"),
        (lambda: registry.get(DENIED, 1), "Vertex AI refused the request: 403 Permission"),
        (lambda: registry.get("Bad_Name", 1), "model name 'Bad_Name': expected lowercase letters"),
        (lambda: registry.register(NAME, tmp_path, labels={}, record={}, promote=True),
         f"{tmp_path}: no model.keras"),
        (lambda: VertexRegistry(PROJECT, REGION, api_endpoint=vertex.url).register(
            NAME, version_dir, labels={}, record={}, promote=True),
         f"vertex://{PROJECT}/{REGION}: staging folder (none): expected a gs:// folder"),
    ]
    for call, message in cases:
        with pytest.raises(InputError) as caught:
            call()
        assert len(str(caught.value).splitlines()) == 1 and message in str(caught.value), str(caught.value)

    version = registry.get(NAME, 1)
    storage.remove(f"{version.uri}/history.csv")
    with pytest.raises(InputError, match=r"history.csv: missing; model histoxai-multitask version 1"):
        registry.fetch(version, tmp_path / "incomplete")

    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    with pytest.raises(InputError, match=rf"^vertex://{PROJECT}/{REGION}: no Google Cloud credentials"):
        VertexRegistry(PROJECT, REGION, api_endpoint=vertex.url).versions(NAME)


def test_open_registry_reads_the_endpoint_and_staging_from_the_environment(vertex, gcs_bucket, version_dir,
                                                                           monkeypatch):
    monkeypatch.setenv("HISTOXAI_VERTEX_ENDPOINT", vertex.url)
    monkeypatch.setenv("HISTOXAI_MODEL_STAGING", f"{gcs_bucket}/staged")
    registry = open_registry(f"vertex://{PROJECT}/{REGION}")
    assert isinstance(registry, VertexRegistry) and registry.location == f"vertex://{PROJECT}/{REGION}"
    version = registry.register(NAME, version_dir, labels={}, record={"run": "r"}, promote=True)
    assert version.uri.startswith(f"{gcs_bucket}/staged/{NAME}/") and version.champion
