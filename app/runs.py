"""Where a run's outputs lie: run paths kept inside the configured root, outputs found by their marker files.

A run is any folder (local or gs://) holding pipeline outputs somewhere below it: a pipeline run's
folder, or a hand-made one. Outputs are recognised by the file each step writes, at most MAX_DEPTH
folders down, so the app does not depend on how a pipeline names its artifact folders.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath

from histoxai import artifacts, layout, storage
from histoxai.errors import InputError

MAX_DEPTH = 6  # e.g. root / pipeline / run id / task / artifact / maps.parquet
PHANTOM_MARKER = layout.TRUTH_TARGETS  # <phantom>/<sample>/phantom_truth/targets.json


def normalize(uri: str | os.PathLike) -> str:
    """A canonical form: gs://bucket/key without '.', '..' or doubled slashes; a local path absolute with
    symbolic links resolved (so a link cannot lead out of the root)."""
    uri = str(uri)
    if storage.is_gcs(uri):
        bucket, key = storage.split_gcs(uri)
        key = posixpath.normpath("/" + key).lstrip("/") if key.strip("/") else ""  # '/..' stays '/'
        return f"{storage.GS_PREFIX}{bucket}/{key}".rstrip("/")
    return os.path.realpath(os.path.abspath(os.path.expanduser(uri)))


def is_within(root: str, uri: str) -> bool:
    """Whether uri is root or lies below it (both normalised)."""
    root, uri = normalize(root), normalize(uri)
    if storage.is_gcs(root) != storage.is_gcs(uri):
        return False
    separator = "/" if storage.is_gcs(root) else os.sep
    return uri == root or uri.startswith(root.rstrip(separator) + separator)


def ensure_within(root: str, uri: str, what: str = "file") -> str:
    """uri, normalised (a local path with its symbolic links resolved: read that one), or InputError naming
    uri when it lies outside root. The app calls it before every read of a file."""
    if not is_within(root, uri):
        linked = not storage.is_gcs(str(uri)) and \
            normalize(uri) != os.path.abspath(os.path.expanduser(str(uri)))
        link = " (a symbolic link leads there)" if linked else ""
        raise InputError(f"{uri}: {what} outside the app's root {normalize(root)}{link}; "
                         "nothing outside it can be read (start the app with a wider --root)")
    return normalize(uri)


def resolve_run(root: str, requested: str) -> str:
    """The run folder for a path from the URL or a widget: relative to root, or absolute (local or gs://);
    refused when it lies outside root."""
    requested = (requested or "").strip()
    if not requested:
        candidate = root
    elif storage.is_gcs(requested) or os.path.isabs(requested):
        candidate = requested
    else:
        candidate = storage.join(root, requested)
    return ensure_within(root, candidate, what="run folder")


def relative(root: str, uri: str) -> str:
    """uri as a path relative to root ('' for root itself)."""
    root, uri = normalize(root), normalize(uri)
    rest = uri[len(root):]
    return rest.lstrip("/").lstrip(os.sep).replace(os.sep, "/")


@dataclasses.dataclass(frozen=True)
class RunIndex:
    """The outputs found under one run folder: each a folder URI, sorted."""

    run: str
    explain: tuple[str, ...] = ()
    evaluate: tuple[str, ...] = ()
    split: tuple[str, ...] = ()
    ingest: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    phantom: tuple[str, ...] = ()

    def label(self, uri: str) -> str:
        return relative(self.run, uri) or "."

    @property
    def empty(self) -> bool:
        return not (self.explain or self.evaluate or self.split or self.ingest or self.models)


def _local_files(top: str, max_depth: int):
    """Relative paths of files at most max_depth folders below top (hidden folders, e.g. partial
    outputs being staged, are skipped)."""
    top_depth = top.rstrip(os.sep).count(os.sep)
    for folder, dirs, files in os.walk(top):
        depth = folder.rstrip(os.sep).count(os.sep) - top_depth
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if depth < max_depth else []
        rel = os.path.relpath(folder, top).replace(os.sep, "/")
        for name in files:
            yield name if rel == "." else f"{rel}/{name}"


def discover(run: str, max_depth: int = MAX_DEPTH) -> RunIndex:
    """Find the outputs below run by their marker files."""
    run = normalize(run)
    if storage.is_gcs(run):
        base = run + "/"
        files = [f[len(base):] for f in storage.list_files(run)]
        files = [f for f in files if f.count("/") <= max_depth + 2
                 and not any(part.startswith(".") for part in f.split("/"))]
    else:
        if not os.path.isdir(run):
            raise InputError(f"{run}: run folder not found; expected a folder with pipeline outputs")
        files = list(_local_files(run, max_depth + 2))
    found: dict[str, set[str]] = {kind: set() for kind in (*artifacts.MARKERS, "phantom")}
    for rel in files:
        folder, _, name = rel.rpartition("/")
        for kind, marker in artifacts.MARKERS.items():
            if name == marker and rel.count("/") <= max_depth:
                found[kind].add(storage.join(run, folder) if folder else run)
        if rel.endswith("/" + PHANTOM_MARKER):
            sample_folder = rel[:-len(PHANTOM_MARKER) - 1]
            parent = sample_folder.rpartition("/")[0]
            found["phantom"].add(storage.join(run, parent) if parent else run)
    return RunIndex(run=run, **{kind: tuple(sorted(uris)) for kind, uris in found.items()})
