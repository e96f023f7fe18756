"""The Vertex AI Model Registry backend (`vertex://PROJECT/REGION`): one Vertex AI model per name.

A version's files go to a fresh folder `<staging_uri>/<name>/<uuid>/` in Cloud Storage (with the record
as `record.json`), then `Model.upload` adds it to the model of that display name (the first version
creates the model, with the name as its id, so two first registrations cannot make two models). The
version's artifact is the SavedModel in `saved_model/`, served by Vertex AI's prebuilt TensorFlow
prediction container. The champion is the version with the alias `champion`, which is also the
model's default version; Vertex AI keeps an alias on one version per model, so adding it to a version
moves it there. Labels carry the caller's facts and the record's verdict and run, made label-safe.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from histoxai import gcp, storage
from histoxai.errors import InputError
from histoxai.model_registry import (
    CHAMPION,
    MANUAL,
    SAVED_MODEL_DIR,
    ModelVersion,
    Registry,
    check_name,
    check_version_dir,
    version_number,
)

RECORD_FILE = "record.json"
STAGING_ENV = "HISTOXAI_MODEL_STAGING"  # the staging folder when none is given
ENDPOINT_ENV = "HISTOXAI_VERTEX_ENDPOINT"  # another Vertex AI endpoint (as `histoxai submit` reads it)
DEFAULT_ALIAS = "default"  # Vertex AI's alias of the version a plain model name resolves to
REGISTRY_LABEL = ("managed_by", "histoxai")  # on every version this backend registers (names() lists them)
# The newest TensorFlow prediction image Vertex AI offers: TensorFlow 2.15, CPU, in the multi-region
# next to the model's region (https://cloud.google.com/vertex-ai/docs/predictions/pre-built-containers;
# aiplatform's constants/prediction.py lists the same). A SavedModel of plain ops, as export.py writes,
# loads in an older TensorFlow Serving than the TensorFlow that wrote it.
SERVING_IMAGE = "{area}-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest"


def serving_image(region: str) -> str:
    area = "europe" if region.startswith("europe") else "asia" if region.startswith(("asia", "australia")) \
        else "us"
    return SERVING_IMAGE.format(area=area)


def _labels(labels: dict[str, Any], record: dict[str, Any]) -> dict[str, str]:
    """The caller's labels and the record's label-safe facts, keys and values fitted to Vertex AI's rules."""
    facts = {key: record[key] for key in ("verdict", "run") if record.get(key) not in (None, "")}
    merged = {gcp.label_key(k): gcp.label_value(v) for k, v in {**labels, **facts}.items()}
    return {**merged, REGISTRY_LABEL[0]: REGISTRY_LABEL[1]}


class VertexRegistry(Registry):
    def __init__(self, project: str, region: str, api_endpoint: str | None = None, credentials=None,
                 staging_uri: str | None = None):
        self.project, self.region = project, region
        self.location = f"vertex://{project}/{region}"
        self.api_endpoint = api_endpoint or os.environ.get(ENDPOINT_ENV) or None
        self.credentials = credentials
        self.staging_uri = staging_uri or os.environ.get(STAGING_ENV) or None

    # --- the client ----------------------------------------------------------------------------------
    def _init(self):
        from google.cloud import aiplatform

        if self.credentials is None:  # resolved here: aiplatform keeps credentials from any earlier init
            self.credentials, _ = gcp.default_credentials(self.project, self.location)
        aiplatform.init(project=self.project, location=self.region, credentials=self.credentials,
                        api_endpoint=self.api_endpoint, api_transport="rest")
        return aiplatform

    def _errors(self, what: str):
        return gcp.vertex_errors(f"{what} in {self.location}")

    def _where(self) -> dict:
        return {"project": self.project, "location": self.region, "credentials": self.credentials}

    def _find(self, name: str):
        """The Vertex AI model with display name `name`, None when there is none."""
        aiplatform = self._init()
        with self._errors(f"model {name}"):
            found = aiplatform.Model.list(filter=f'display_name="{check_name(name)}"', **self._where())
        if len(found) > 1:
            raise InputError(f"model {name}: {len(found)} Vertex AI models in {self.location} have this "
                             f"display name ({', '.join(m.resource_name for m in found)}); expected one")
        return found[0] if found else None

    def _version(self, name: str, model, record: dict | None = None) -> ModelVersion:
        """A ModelVersion from a Vertex AI model version (aiplatform's gapic message); its record from
        record.json beside the SavedModel."""
        uri = (model.artifact_uri or "").rstrip("/").removesuffix("/" + SAVED_MODEL_DIR)
        if record is None:
            record = self._record(uri)
        created = model.version_create_time
        parent = model.name.partition("@")[0]
        return ModelVersion(
            name=name, version=int(model.version_id), uri=uri,
            aliases=tuple(sorted(a for a in model.version_aliases if a != DEFAULT_ALIAS)),
            created=created.isoformat(timespec="seconds") if created else "", labels=dict(model.labels),
            record=record, resource_name=f"{parent}@{model.version_id}")

    @staticmethod
    def _record(uri: str) -> dict:
        if not uri or not storage.exists(storage.join(uri, RECORD_FILE)):
            return {}  # a version this backend did not register
        try:
            return json.loads(storage.read_text(storage.join(uri, RECORD_FILE)))
        except ValueError as err:
            raise InputError(f"{storage.join(uri, RECORD_FILE)}: not valid JSON ({err}); expected the "
                             "version's record") from None

    # --- the contract -------------------------------------------------------------------------------
    def names(self) -> list[str]:
        aiplatform = self._init()
        key, value = REGISTRY_LABEL
        with self._errors("models"):
            found = aiplatform.Model.list(filter=f'labels.{key}="{value}"', **self._where())
        return sorted({m.display_name for m in found})

    def versions(self, name: str) -> list[ModelVersion]:
        model = self._find(name)
        if model is None:
            return []
        aiplatform = self._init()
        with self._errors(f"model {name}"):
            client = aiplatform.ModelRegistry(model.resource_name, **self._where()).client
            found = list(client.list_model_versions(name=model.resource_name))
        return sorted((self._version(name, m) for m in found), key=lambda v: v.version)

    def get(self, name: str, which: str | int) -> ModelVersion:
        from google.api_core import exceptions as api_exc

        model = self._find(name)
        if model is None:
            raise InputError(f"model {name}: not in the registry {self.location} (it has "
                             f"{', '.join(self.names()) or 'no models'})")
        number = version_number(which)
        which_id = str(which) if number is None else str(number)  # Vertex AI: ID@3 or ID@champion
        aiplatform = self._init()
        try:
            with self._errors(f"model {name}@{which}"):
                found = aiplatform.Model(model.resource_name, version=which_id, **self._where())
        except InputError as err:
            if not isinstance(err.__cause__, api_exc.NotFound | api_exc.InvalidArgument):
                raise
            known = ", ".join(str(v.version) for v in self.versions(name)) or "none"
            raise InputError(f"model {name}@{which}: no such version or alias in {self.location}; it has "
                             f"versions {known}") from None
        return self._version(name, found.gca_resource)

    def register(self, name: str, version_dir: Path, *, labels: dict[str, str], record: dict[str, Any],
                 promote: bool) -> ModelVersion:
        check_name(name)
        version_dir = check_version_dir(version_dir)
        if not self.staging_uri or not storage.is_gcs(self.staging_uri):
            raise InputError(f"{self.location}: staging folder {self.staging_uri or '(none)'}: expected a "
                             f"gs:// folder for the version files (or set {STAGING_ENV})")
        json.dumps(record)  # a record that cannot be stored fails before anything is uploaded
        folder = storage.join(self.staging_uri, name, uuid.uuid4().hex)
        for path in sorted(p for p in version_dir.rglob("*") if p.is_file()):
            storage.upload_file(path, storage.join(folder, path.relative_to(version_dir).as_posix()))
        storage.write_text(storage.join(folder, RECORD_FILE), json.dumps(record, indent=1) + "\n")

        aiplatform = self._init()
        for attempt in range(2):
            parent = self._find(name)
            try:
                with self._errors(f"model {name}"):
                    uploaded = aiplatform.Model.upload(
                        display_name=name, artifact_uri=storage.join(folder, SAVED_MODEL_DIR),
                        serving_container_image_uri=serving_image(self.region),
                        parent_model=parent.resource_name if parent else None,
                        # the first version names the model, so a second first registration is refused
                        model_id=None if parent else name,
                        # a model's first version is its default whatever is asked; the champion only if
                        is_default_version=promote or parent is None,
                        version_aliases=[CHAMPION] if promote else None, labels=_labels(labels, record),
                        version_description=f"{record.get('verdict') or 'registered'} (run "
                                            f"{record.get('run') or 'unknown'})",
                        sync=True, **self._where())
            except InputError as err:
                if attempt or parent or not gcp.already_exists(err.__cause__):
                    raise
                continue  # another registration created the model meanwhile: add a version to it
            return self._version(name, uploaded.gca_resource, record)
        raise AssertionError("unreachable")

    def set_champion(self, name: str, version: int, *, reason: str) -> ModelVersion:
        target = self.get(name, version)
        model_name = target.resource_name.partition("@")[0]
        aiplatform = self._init()
        with self._errors(f"model {name}@{version}"):
            registry = aiplatform.ModelRegistry(model_name, **self._where())
            # aliases are unique within a model: adding them here takes them off the version that had them
            registry.add_version_aliases([CHAMPION, DEFAULT_ALIAS], version=str(target.version))
        record = {**target.record, "verdict": MANUAL, "reason": reason}
        if target.uri:
            storage.write_text(storage.join(target.uri, RECORD_FILE), json.dumps(record, indent=1) + "\n")
        labels = {**target.labels, "verdict": MANUAL, "reason": gcp.label_value(reason)}
        self._relabel(target.resource_name, labels)
        return self.get(name, version)

    def _relabel(self, versioned_name: str, labels: dict[str, str]) -> None:
        """Replace one version's labels (a name with @VERSION updates that version, not the model)."""
        from google.cloud.aiplatform_v1.types import model as gca_model
        from google.protobuf import field_mask_pb2

        aiplatform = self._init()
        with self._errors(versioned_name):
            client = aiplatform.ModelRegistry(versioned_name.partition("@")[0], **self._where()).client
            client.update_model(model=gca_model.Model(name=versioned_name, labels=labels),
                                update_mask=field_mask_pb2.FieldMask(paths=["labels"]))
