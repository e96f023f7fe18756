"""Outputs on gs:// that switch from the old version to the new one at a single moment.

GCS cannot rename a folder, and overwriting an output object by object leaves a mix when the writer
dies. So `commit` uploads a new output under OUT/.histoxai-v/<version>/ and then writes the record
OUT/.histoxai-output.json, which names the version and every file with its generation, size and
CRC32C, with a generation precondition (a concurrent writer makes one of the two fail): readers see
the old record or the new one, never a mix. Only then are the older versions deleted.

Reads go through `resolve(uri)`: for a file inside a committed output it gives the physical object and
the generation its record names, so a replaced or damaged object is refused by name. Files of
outputs written without a record (older layouts) resolve to themselves.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from histoxai.errors import InputError

RECORD = ".histoxai-output.json"
VERSIONS = ".histoxai-v"
CACHE_SECONDS = 10.0  # a long-lived reader (the app) sees a newer commit after this long
_records: dict[str, tuple[float, dict | None]] = {}


def record_uri(folder: str) -> str:
    return folder.rstrip("/") + "/" + RECORD


def _record(folder: str) -> dict | None:
    """The commit record of an output folder (None: not a committed output), cached briefly."""
    from histoxai import storage

    cached = _records.get(folder)
    if cached and time.monotonic() - cached[0] < CACHE_SECONDS:
        return cached[1]
    data, _ = storage.read_versioned(record_uri(folder))
    try:
        record = json.loads(data) if data else None
    except ValueError as err:
        raise InputError(f"{record_uri(folder)}: not valid JSON ({err}); expected the output record "
                         "histoxai writes last (run the step again with --overwrite)") from None
    _records[folder] = (time.monotonic(), record)
    return record


def forget(folder: str | None = None) -> None:
    """Drop cached records (all, or one folder's): after a commit, or when a version vanished."""
    if folder is None:
        _records.clear()
    else:
        _records.pop(folder.rstrip("/"), None)


def resolve(uri: str) -> tuple[str, dict | None]:
    """(physical URI, its record entry: generation, size, crc32c) of a gs:// file; the URI itself and
    None outside committed outputs."""
    bucket_and_key = uri[len("gs://"):]
    bucket, _, key = bucket_and_key.partition("/")
    parts = key.strip("/").split("/")
    if VERSIONS in parts or parts[-1] == RECORD:
        return uri, None  # already physical
    for depth in range(len(parts) - 1, 0, -1):  # the nearest enclosing output wins
        folder = f"gs://{bucket}/" + "/".join(parts[:depth])
        try:
            record = _record(folder)
        except InputError as err:  # name the file the caller asked for, not the record looked up
            raise InputError(str(err).replace(record_uri(folder), uri)) from None
        if record is None:
            continue
        rel = "/".join(parts[depth:])
        entry = record["files"].get(rel)
        if entry is None:
            return uri, None  # not part of that output (written beside it later)
        return f"{folder}/{VERSIONS}/{record['version']}/{rel}", entry
    return uri, None


def crc32c(content: bytes | Path) -> str:
    """The CRC32C of bytes or of a file (read in blocks) as GCS states it (base64, big-endian)."""
    import base64

    import google_crc32c

    checksum = google_crc32c.Checksum()
    if isinstance(content, Path):
        with open(content, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                checksum.update(block)
    else:
        checksum.update(content)
    return base64.b64encode(checksum.digest()).decode()


def check(uri: str, physical: str, entry: dict, content: bytes | Path):
    """The content read for a committed file (bytes, or the file it was downloaded to), or InputError
    when it is not the one the output's record names."""
    size = content.stat().st_size if isinstance(content, Path) else len(content)
    if size != int(entry["size"]) or crc32c(content) != entry["crc32c"]:
        raise InputError(f"{uri}: its content ({physical}) differs from the output's record (size {size}, "
                         f"expected {entry['size']}; CRC32C {crc32c(content)}, expected {entry['crc32c']}): "
                         "replaced or damaged outside histoxai; write the output again with --overwrite")
    return content


def logical(files: list[str]) -> list[str]:
    """Physical object URIs (a listing) as readers name them: current versions under their folder's
    name, records and superseded versions left out."""
    out = set()
    for uri in files:
        name = uri.rsplit("/", 1)[-1]
        if name == RECORD:
            continue
        folder, marker, rest = uri.partition(f"/{VERSIONS}/")
        if not marker:
            out.add(uri)
            continue
        version, _, rel = rest.partition("/")
        record = _record(folder)
        if record is not None and record["version"] == version and rel in record["files"]:
            out.add(f"{folder}/{rel}")
    return sorted(out)


def commit(local_dir: Path, uri: str, *, overwrite: bool, commit_last: str | None = None) -> None:
    """Publish a finished local folder as the output at `uri` (gs://), switching at one moment."""
    from histoxai import storage

    uri = uri.rstrip("/")
    _, generation = storage.read_versioned(record_uri(uri))
    if not overwrite and (generation or storage.list_files(uri)):
        raise InputError(f"{uri}: output already exists; pass --overwrite to replace it")
    version = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    files = sorted(p for p in local_dir.rglob("*") if p.is_file())
    if commit_last is not None:  # kept for readers of older layouts: the marker file goes up last
        files.sort(key=lambda p: p.relative_to(local_dir).as_posix() == commit_last)
    entries = {}
    for path in files:
        rel = path.relative_to(local_dir).as_posix()
        entries[rel] = storage.upload_file_versioned(path, f"{uri}/{VERSIONS}/{version}/{rel}")
    record = {"version": version, "files": entries, "written": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                             time.gmtime())}
    text = json.dumps(record, indent=1, sort_keys=True).encode()
    if not storage.write_if_generation(record_uri(uri), text, generation, content_type="application/json"):
        storage.remove(f"{uri}/{VERSIONS}/{version}")
        raise InputError(f"{uri}: another writer replaced this output at the same time; nothing of this "
                         "run was kept (run the step again)")
    forget(uri)
    current = f"{uri}/{VERSIONS}/{version}/"
    for stale in storage.list_files(uri, physical=True):  # older versions and files of older layouts
        if not stale.startswith(current) and stale != record_uri(uri):
            storage.remove(stale)
