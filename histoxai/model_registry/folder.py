"""The folder model registry: versions under a local path or gs:// URI, one JSON index per model.

Layout: ROOT/<name>/index.json lists the versions (number, folder, labels, record) and the aliases
({"champion": N}); ROOT/<name>/versions/<uuid>/ holds each version's files. A registration copies
its files into a fresh folder first and then claims the next number in the index, so a killed
registration leaves an unlisted folder and never a listed version without files. The index changes
only by read-modify-write: on gs:// with the generation read as precondition, locally under a file
lock; two concurrent registrations both land, with different numbers.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import random
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from histoxai import storage
from histoxai.errors import InputError
from histoxai.model_registry import (
    CHAMPION,
    MANUAL,
    ModelVersion,
    Registry,
    check_name,
    check_version_dir,
    version_number,
)

INDEX = "index.json"
VERSIONS_DIR = "versions"
_FORMAT = 1
_WRITE_ATTEMPTS = 30
_FOLDER = re.compile(VERSIONS_DIR + r"/[0-9a-f]{32}")  # what register writes; no path out of the registry


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class FolderRegistry(Registry):
    def __init__(self, location: str):
        self.location = str(location).rstrip("/")

    # --- the index -----------------------------------------------------------------------------
    def _index_uri(self, name: str) -> str:
        return storage.join(self.location, check_name(name), INDEX)

    def _parse(self, uri: str, data: bytes | None, name: str) -> dict:
        if data is None:
            return {"name": name, "format": _FORMAT, "versions": [], "aliases": {}, "history": []}
        expected = ("expected the model registry index histoxai writes (repair it from its history, or "
                    "move it away to start the model afresh); nothing was changed")
        try:
            index = json.loads(data)
        except ValueError as err:
            raise InputError(f"{uri}: not valid JSON ({err}); {expected}") from None
        versions = index.get("versions") if isinstance(index, dict) else None
        aliases = index.get("aliases") if isinstance(index, dict) else None
        if (not isinstance(versions, list) or not isinstance(aliases, dict)
                or not all(isinstance(v, dict) and isinstance(v.get("version"), int)
                           and _FOLDER.fullmatch(str(v.get("folder"))) for v in versions)):
            raise InputError(f"{uri}: no list of versions with numbers and folders ({VERSIONS_DIR}/<id>); "
                             f"{expected}")
        numbers = {v["version"] for v in versions}
        dangling = {a: n for a, n in aliases.items() if n not in numbers}
        if dangling or index.get("name") != name:
            raise InputError(f"{uri}: aliases {dangling} name versions it does not list, or it is the "
                             f"index of {index.get('name')!r}, not {name!r}; {expected}")
        index.setdefault("history", [])
        return index

    def _read(self, name: str) -> dict:
        uri = self._index_uri(name)
        return self._parse(uri, storage.read_bytes(uri) if storage.exists(uri) else None, name)

    def _update(self, name: str, change: Callable[[dict], Any]) -> Any:
        """Apply `change` (mutates the index, returns a result) so that no concurrent change is lost."""
        uri = self._index_uri(name)
        if not storage.is_gcs(uri):
            with _locked(Path(uri)):
                index = self._read(name)
                result = change(index)
                storage.write_text(uri, json.dumps(index, indent=1) + "\n")
                return result
        for attempt in range(_WRITE_ATTEMPTS):
            data, generation = storage.read_versioned(uri)
            index = self._parse(uri, data, name)
            result = change(index)
            text = json.dumps(index, indent=1) + "\n"
            if storage.write_if_generation(uri, text.encode(), generation, content_type="application/json"):
                return result
            time.sleep(random.uniform(0.02, 0.1) * (attempt + 1))  # back off from the other writer
        raise InputError(f"{uri}: other writers kept changing it during {_WRITE_ATTEMPTS} attempts; "
                         "try again")

    def _version(self, name: str, index: dict, entry: dict) -> ModelVersion:
        aliases = tuple(sorted(a for a, n in index["aliases"].items() if n == entry["version"]))
        return ModelVersion(name=name, version=entry["version"],
                            uri=storage.join(self.location, name, entry["folder"]), aliases=aliases,
                            created=entry.get("created", ""), labels=dict(entry.get("labels") or {}),
                            record=dict(entry.get("record") or {}),
                            resource_name=f"{self._index_uri(name)}#{entry['version']}")

    # --- the contract ------------------------------------------------------------------------------
    def names(self) -> list[str]:
        suffix = "/" + INDEX
        if not storage.is_gcs(self.location):
            return sorted(p.parent.name for p in Path(self.location).glob(f"*/{INDEX}"))
        found = set()
        for uri in storage.list_files(self.location):
            relative = uri[len(self.location):].strip("/")
            if relative.endswith(suffix) and relative.count("/") == 1:
                found.add(relative[: -len(suffix)])
        return sorted(found)

    def versions(self, name: str) -> list[ModelVersion]:
        index = self._read(name)
        return [self._version(name, index, e) for e in sorted(index["versions"], key=lambda e: e["version"])]

    def get(self, name: str, which: str | int) -> ModelVersion:
        versions = self.versions(name)
        if not versions:
            raise InputError(f"model {name}: not in the registry {self.location} (it has "
                             f"{', '.join(self.names()) or 'no models'})")
        number = version_number(which)
        for version in versions:
            if version.version == number or (number is None and which in version.aliases):
                return version
        raise InputError(f"model {name}@{which}: no such version or alias in {self.location}; it has "
                         f"versions {', '.join(str(v.version) for v in versions)}")

    def register(self, name: str, version_dir: Path, *, labels: dict[str, str], record: dict[str, Any],
                 promote: bool) -> ModelVersion:
        version_dir = check_version_dir(version_dir)
        self._read(name)  # a damaged index fails before anything is copied
        folder = f"{VERSIONS_DIR}/{uuid.uuid4().hex}"
        target = storage.join(self.location, check_name(name), folder)
        for path in sorted(p for p in version_dir.rglob("*") if p.is_file()):
            storage.upload_file(path, storage.join(target, path.relative_to(version_dir).as_posix()))

        def claim(index: dict) -> int:
            number = max((v["version"] for v in index["versions"]), default=0) + 1
            index["versions"].append({"version": number, "folder": folder, "created": now(),
                                      "labels": dict(labels), "record": dict(record)})
            if promote:
                index["aliases"][CHAMPION] = number
                index["history"].append({"at": now(), "champion": number, "by": "rule"})
            return number

        return self.get(name, self._update(name, claim))

    def set_champion(self, name: str, version: int, *, reason: str) -> ModelVersion:
        self.get(name, version)  # one clear error for a version that does not exist

        def move(index: dict) -> None:
            index["aliases"][CHAMPION] = version
            for entry in index["versions"]:
                if entry["version"] == version:
                    entry.setdefault("record", {}).update(verdict=MANUAL, reason=reason)
            index["history"].append({"at": now(), "champion": version, "by": "hand", "reason": reason})

        self._update(name, move)
        return self.get(name, version)



@contextlib.contextmanager
def _locked(index: Path) -> Iterator[None]:
    """An exclusive lock beside a local index (writers on one machine or a shared POSIX filesystem)."""
    index.parent.mkdir(parents=True, exist_ok=True)
    with open(index.with_name(index.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)

