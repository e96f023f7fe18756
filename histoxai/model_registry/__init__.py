"""The model registry: numbered versions of each model, the `champion` alias, and where each came from.

Two backends with one meaning: a folder registry (a local path or gs:// URI; `folder.py`) and the
Vertex AI Model Registry (`vertex://PROJECT/REGION`; `vertex.py`). A version is a folder of files
(`VERSION_FILES`: the training output, the SavedModel export and the patches it trained on) plus its
labels (config hash, code version, training samples) and its record (run, samples, verdict, scores).
The champion is the version that serves; `register` adds a version and moves the champion only when
asked (the promotion rule lives in `gate.py`), `set_champion` moves it by hand (promote, rollback).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from histoxai import artifacts, storage
from histoxai.errors import InputError

CHAMPION = "champion"
VERTEX_SCHEME = "vertex://"
# sample, row, col, split of every patch a version trained or validated on (and the gaps around them)
TRAINING_PATCHES = "training_patches.parquet"
SAVED_MODEL_DIR = "saved_model"  # the SavedModel export (what a prediction container serves)
VERSION_FILES = (artifacts.MODEL_FILE, artifacts.MODEL_CONFIG, artifacts.TRAIN_METRICS,
                 artifacts.TRAIN_HISTORY, TRAINING_PATCHES)
# Verdicts a version's record carries: promoted by the rule, kept out by the rule, moved by a person
PROMOTED, NOT_PROMOTED, MANUAL = "promoted", "not-promoted", "manual"  # label-safe (Vertex AI)
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")  # what both backends accept as a model name


@dataclasses.dataclass(frozen=True)
class ModelVersion:
    """One registered version as either backend describes it."""

    name: str
    version: int
    uri: str  # the version's folder (VERSION_FILES, SAVED_MODEL_DIR/)
    aliases: tuple[str, ...] = ()
    created: str = ""
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    record: dict[str, Any] = dataclasses.field(default_factory=dict)
    resource_name: str = ""  # Vertex AI: projects/.../models/ID@VERSION; folder: the index URI#version

    @property
    def champion(self) -> bool:
        return CHAMPION in self.aliases

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "aliases": list(self.aliases)}


def check_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise InputError(f"model name {name!r}: expected lowercase letters, digits and '-', starting with a "
                         "letter, at most 63 characters (e.g. histoxai-multitask)")
    return name


def parse_reference(reference: str) -> tuple[str, str | None]:
    """NAME[@VERSION|@ALIAS] -> (name, version or alias or None)."""
    name, _, which = reference.partition("@")
    return check_name(name), (which or None)


def version_number(which: str | int) -> int | None:
    """3, "3" or "v3" -> 3; an alias (champion, ...) -> None."""
    if isinstance(which, int):
        return which
    text = str(which).lstrip("v")
    return int(text) if text.isdigit() else None


def check_version_dir(version_dir: Path) -> Path:
    """A folder to register: VERSION_FILES and SAVED_MODEL_DIR/, or one InputError naming what lacks."""
    version_dir = Path(version_dir)
    missing = [f for f in (*VERSION_FILES, SAVED_MODEL_DIR) if not (version_dir / f).exists()]
    if missing:
        raise InputError(f"{version_dir}: no {', '.join(missing)}; expected a version folder with "
                         f"{', '.join(VERSION_FILES)} and {SAVED_MODEL_DIR}/")
    return version_dir


def open_registry(location: str, *, staging_uri: str = ""):
    """The registry at `location`: vertex://PROJECT/REGION, or a folder (local path or gs:// URI).
    staging_uri: where Vertex AI's version files go (a gs:// folder); a folder registry holds its own."""
    if not location or not location.strip():
        raise InputError("--registry: empty; expected a folder (local or gs://) or vertex://PROJECT/REGION")
    if location.startswith(VERTEX_SCHEME):
        from histoxai.model_registry.vertex import VertexRegistry

        project, _, region = location[len(VERTEX_SCHEME):].strip("/").partition("/")
        if not project or not region or "/" in region:
            raise InputError(f"--registry {location}: expected vertex://PROJECT/REGION, "
                             "e.g. vertex://my-project/europe-west4")
        return VertexRegistry(project=project, region=region, staging_uri=staging_uri or None)
    from histoxai.model_registry.folder import FolderRegistry

    return FolderRegistry(location)


def previous_champion(versions: list[ModelVersion]) -> ModelVersion:
    """The version a rollback returns to: the newest version older than the champion that was the
    champion once (its verdict is promoted or manual)."""
    current = next((v for v in versions if v.champion), None)
    if current is None:
        raise InputError(f"{versions[0].name if versions else 'model'}: no champion to roll back from")
    earlier = [v for v in versions if v.version < current.version
               and v.record.get("verdict") in (PROMOTED, MANUAL)]
    if not earlier:
        raise InputError(f"{current.name}: version {current.version} is the first champion; "
                         "nothing to roll back to")
    return max(earlier, key=lambda v: v.version)


class Registry:
    """What both backends offer (they subclass this; the methods below are their contract)."""

    location: str

    def names(self) -> list[str]:
        raise NotImplementedError

    def versions(self, name: str) -> list[ModelVersion]:
        """Every version of `name`, oldest first ([] when the model has none)."""
        raise NotImplementedError

    def get(self, name: str, which: str | int) -> ModelVersion:
        """A version by number or alias; one InputError when there is none."""
        raise NotImplementedError

    def champion(self, name: str) -> ModelVersion | None:
        found = [v for v in self.versions(name) if v.champion]
        return found[0] if found else None

    def register(self, name: str, version_dir: Path, *, labels: dict[str, str], record: dict[str, Any],
                 promote: bool) -> ModelVersion:
        """Add the folder `version_dir` (VERSION_FILES + SAVED_MODEL_DIR/) as the next version; with
        `promote` it becomes the champion (and the default version) in the same change."""
        raise NotImplementedError

    def set_champion(self, name: str, version: int, *, reason: str) -> ModelVersion:
        """Move the champion alias (and the default version) to `version` by hand."""
        raise NotImplementedError

    def rollback(self, name: str, *, reason: str) -> ModelVersion:
        return self.set_champion(name, previous_champion(self.versions(name)).version, reason=reason)

    def fetch(self, version: ModelVersion, dest: Path) -> Path:
        """Copy the version's files (VERSION_FILES) into the local folder `dest`; returns it."""
        dest = Path(dest)
        for file in VERSION_FILES:
            uri = storage.join(version.uri, file)
            if not version.uri or not storage.exists(uri):
                raise InputError(f"{uri}: missing; model {version.name} version {version.version} in "
                                 f"{self.location} is incomplete (expected {', '.join(VERSION_FILES)})")
            storage.download_file(uri, dest / file)
        return dest
