"""Storage for every input and output: local paths and gs:// URIs behind one small API.

GCS goes through the real google-cloud-storage client, which honours STORAGE_EMULATOR_HOST (the
tests point it at a local emulator). TensorFlow and h5py get local paths: `local_copy` fetches an
input, `staged_output` builds an output locally and publishes it whole, so that a failed step never
leaves a half-written artifact behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from histoxai import gcs
from histoxai.errors import InputError

GS_PREFIX = "gs://"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def is_gcs(uri: str | os.PathLike) -> bool:
    return str(uri).startswith(GS_PREFIX)


def join(base: str | os.PathLike, *parts: str) -> str:
    """Join path parts with '/', for URIs and local paths alike."""
    out = str(base)
    for part in parts:
        out = out.rstrip("/") + "/" + str(part).lstrip("/")
    return out


def split_gcs(uri: str) -> tuple[str, str]:
    """'gs://bucket/a/b' -> ('bucket', 'a/b')."""
    if not is_gcs(uri):
        raise ValueError(f"not a gs:// URI: {uri}")
    bucket, _, key = uri[len(GS_PREFIX):].partition("/")
    if not bucket:
        raise InputError(f"{uri}: expected gs://BUCKET/PATH")
    return bucket, key


def _read(uri: str, action: Callable, whole: bool = False):
    """action(blob) for the blob to read at `uri`: inside an output committed by histoxai.versioned,
    the object and generation its record names (`whole` reads are checked against its CRC32C too).
    When that object is gone, the record is looked up once more (a newer version may have replaced
    it), then the file is refused by name."""
    from google.api_core import exceptions as gexc

    from histoxai import versioned

    for attempt in range(2):
        physical, entry = versioned.resolve(uri)
        generation = None if entry is None else int(entry["generation"])
        bucket, key = split_gcs(physical)
        with gcs.errors(uri):
            try:
                result = action(gcs.blob(physical, generation))
            except gexc.NotFound:
                if entry is None:
                    raise
                versioned.forget()
                if attempt:
                    raise InputError(f"{uri}: its output record names {physical} (generation {generation}), "
                                     "which is gone or was replaced outside histoxai; write the output "
                                     "again with --overwrite") from None
                continue
        return versioned.check(uri, physical, entry, result) if whole and entry else result
    raise AssertionError("unreachable")


def exists(uri: str | os.PathLike) -> bool:
    uri = str(uri)
    if not is_gcs(uri):
        return Path(uri).exists()
    if _read(uri, lambda blob: blob.exists(**gcs.bound())):
        return True
    return bool(list_files(uri))


def list_files(prefix: str | os.PathLike, *, physical: bool = False) -> list[str]:
    """All files under a folder, as full paths/URIs, sorted (on gs://, files of committed outputs as
    readers name them, unless `physical`)."""
    prefix = str(prefix)
    if not is_gcs(prefix):
        root = Path(prefix)
        if not root.is_dir():
            return []
        return sorted(str(p) for p in root.rglob("*") if p.is_file())
    bucket, key = split_gcs(prefix)
    key = key.rstrip("/") + "/" if key else ""
    with gcs.errors(prefix):
        blobs = gcs.client().list_blobs(bucket, prefix=key, **gcs.bound())
        found = sorted(f"{GS_PREFIX}{bucket}/{b.name}" for b in blobs if not b.name.endswith("/"))
    if physical:
        return found
    from histoxai import versioned

    return versioned.logical(found)


def remove(uri: str | os.PathLike) -> None:
    """Delete a file or a whole folder (every object under the prefix on gs://); missing is fine."""
    uri = str(uri)
    if not is_gcs(uri):
        path = Path(uri)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        return
    from google.api_core import exceptions as gexc

    targets = list_files(uri, physical=True) or [uri]
    with gcs.errors(uri):
        for target in targets:
            try:
                gcs.blob(target).delete(**gcs.bound())
            except gexc.NotFound:
                pass


def read_bytes(uri: str | os.PathLike) -> bytes:
    uri = str(uri)
    if not is_gcs(uri):
        try:
            return Path(uri).read_bytes()
        except FileNotFoundError as err:
            raise InputError(f"{uri}: file not found") from err
    return _read(uri, lambda blob: blob.download_as_bytes(**gcs.bound()), whole=True)


def read_range(uri: str | os.PathLike, start: int, length: int, *, generation: int | None = None) -> bytes:
    """Bytes [start, start+length) of a file; one ranged request on GCS (of that generation if given)."""
    uri = str(uri)
    if not is_gcs(uri):
        with open(uri, "rb") as fh:
            fh.seek(start)  # never ask for more than the file holds: Python allocates what is asked
            return fh.read(max(0, min(length, os.fstat(fh.fileno()).st_size - start)))
    if generation is not None:  # pinned by the caller (histoxai.ranged): exactly that object
        with gcs.errors(uri):
            blob = gcs.blob(uri, generation)
            return blob.download_as_bytes(start=start, end=start + length - 1, **gcs.bound())
    return _read(uri, lambda blob: blob.download_as_bytes(start=start, end=start + length - 1, **gcs.bound()))


def stat(uri: str | os.PathLike) -> tuple[int | None, int | None]:
    """(size in bytes, generation) of a file; (None, None) when there is no such file. A local file has
    no generation (None)."""
    uri = str(uri)
    if not is_gcs(uri):
        path = Path(uri)
        return (path.stat().st_size if path.is_file() else None), None
    from histoxai import versioned

    physical, entry = versioned.resolve(uri)
    bucket, key = split_gcs(physical)
    with gcs.errors(uri):
        generation = entry and int(entry["generation"])
        blob = gcs.client().bucket(bucket).get_blob(key, generation=generation, **gcs.bound())
    return (None, None) if blob is None else (blob.size, blob.generation)


def size(uri: str | os.PathLike) -> int | None:
    """Size of a file in bytes, None when there is no such file (one metadata request on GCS)."""
    return stat(uri)[0]



def read_versioned(uri: str) -> tuple[bytes | None, int]:
    """A gs:// object's bytes and generation, (None, 0) when it does not exist: what
    `write_if_generation` takes for a read-modify-write that no concurrent writer can undo."""
    from google.api_core import exceptions as gexc

    bucket, key = split_gcs(uri)
    with gcs.errors(uri):
        while True:
            blob = gcs.client().bucket(bucket).get_blob(key, **gcs.bound())
            if blob is None:
                return None, 0
            generation = blob.generation
            try:  # the bytes of exactly the generation seen; replaced in between: look again
                return blob.download_as_bytes(if_generation_match=generation, **gcs.bound()), generation
            except (gexc.PreconditionFailed, gexc.NotFound):
                continue


def write_if_generation(uri: str, data: bytes, generation: int, *,
                        content_type: str = "application/octet-stream") -> bool:
    """Write a gs:// object only if it is still at `generation` (0: only if it does not exist yet).
    False when another writer came first: re-read and re-apply the change."""
    from google.api_core import exceptions as gexc

    with gcs.errors(uri):
        try:
            gcs.blob(uri).upload_from_string(data, content_type=content_type, if_generation_match=generation,
                                        **gcs.bound())
        except gexc.PreconditionFailed:
            return False
    return True


def read_parquet(uri: str | os.PathLike, expected: str):
    """A Parquet table (local or gs://) as a DataFrame; a missing, damaged or foreign file becomes one
    InputError naming it and what was `expected` there."""
    import io

    import pandas as pd

    uri = str(uri)
    data = read_bytes(uri)
    try:
        return pd.read_parquet(io.BytesIO(data))
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise InputError(f"{uri}: not a readable Parquet table ({err}); expected {expected}") from err


def read_text(uri: str | os.PathLike) -> str:
    return read_bytes(uri).decode("utf-8")


def write_bytes(uri: str | os.PathLike, data: bytes) -> None:
    """Write a whole file atomically: readers see the old content or the new, never a part."""
    uri = str(uri)
    if is_gcs(uri):
        with gcs.errors(uri):
            gcs.blob(uri).upload_from_string(data, **gcs.bound())  # a GCS upload is atomic per object
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(uri: str | os.PathLike, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def upload_file_versioned(local_path: str | os.PathLike, uri: str) -> dict:
    """Upload to a new gs:// object (never overwriting); returns its generation, size and CRC32C."""
    with gcs.errors(uri):
        blob = gcs.blob(uri)
        blob.upload_from_filename(str(local_path), if_generation_match=0, **gcs.bound())
    return {"generation": blob.generation, "size": blob.size, "crc32c": blob.crc32c}


def upload_file(local_path: str | os.PathLike, uri: str) -> None:
    if is_gcs(uri):
        with gcs.errors(uri):
            gcs.blob(uri).upload_from_filename(str(local_path), **gcs.bound())
    else:
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local_path, uri)


def download_file(uri: str, local_path: str | os.PathLike) -> None:
    Path(local_path).parent.mkdir(parents=True, exist_ok=True)
    if is_gcs(uri):
        from histoxai import versioned

        _read(uri, lambda blob: blob.download_to_filename(str(local_path), **gcs.bound()))
        physical, entry = versioned.resolve(uri)
        if entry is not None:
            versioned.check(uri, physical, entry, Path(local_path))
    else:
        shutil.copyfile(uri, local_path)


@contextlib.contextmanager
def local_copy(uri: str | os.PathLike) -> Iterator[Path]:
    """A local path for a file or folder; gs:// content is downloaded to a temporary folder.

    A missing local input raises InputError naming it.
    """
    uri = str(uri)
    if not is_gcs(uri):
        if not Path(uri).exists():
            raise InputError(f"{uri}: not found")
        yield Path(uri)
        return
    with tempfile.TemporaryDirectory(prefix="histoxai-in-") as tmp:
        name = uri.rstrip("/").rsplit("/", 1)[-1] or "root"
        target = Path(tmp) / name
        with gcs.errors(uri):
            if _read(uri, lambda blob: blob.exists(**gcs.bound())):
                download_file(uri, target)
            else:
                files = list_files(uri)
                if not files:
                    raise InputError(f"{uri}: not found (no object or folder of that name)")
                base = uri.rstrip("/") + "/"
                for f in files:
                    download_file(f, target / f[len(base):])
        yield target


def publish_dir(local_dir: str | os.PathLike, uri: str, *, commit_last: str | None = None,
                replacements: dict[Path, Path] | None = None) -> None:
    """Upload a finished local folder to gs:// (the file named commit_last goes up last,
    so its presence marks a complete output); `replacements` maps files of the folder to local
    files uploaded in their place."""
    local_dir = Path(local_dir)
    replacements = replacements or {}
    files = sorted(p for p in local_dir.rglob("*") if p.is_file())
    if commit_last is not None:
        files.sort(key=lambda p: p.relative_to(local_dir).as_posix() == commit_last)
    for path in files:
        upload_file(replacements.get(path, path), join(uri, path.relative_to(local_dir).as_posix()))


@contextlib.contextmanager
def staged_output(uri: str | os.PathLike, *, overwrite: bool = False,
                  commit_last: str | None = None) -> Iterator[Path]:
    """Build an output folder locally and publish it only if the block finishes.

    Local: the folder is built beside the destination and renamed into place, so a failure leaves
    nothing. An existing non-empty destination is an error unless overwrite=True (then it is
    replaced only after the new output is complete). gs://: built in a temporary folder, then
    committed by histoxai.versioned: uploaded as a new version and switched to by one record write.
    """
    uri = str(uri)
    if is_gcs(uri):
        from histoxai import versioned

        if not overwrite and list_files(uri):
            raise InputError(f"{uri}: output already exists; pass --overwrite to replace it")
        with tempfile.TemporaryDirectory(prefix="histoxai-out-") as tmp:
            yield Path(tmp)
            versioned.commit(Path(tmp), uri, overwrite=overwrite, commit_last=commit_last)
        return

    dest = Path(uri)
    if dest.exists() and not dest.is_dir():
        raise InputError(f"{dest}: exists and is not a folder; expected an output folder path")
    if dest.is_dir() and any(dest.iterdir()) and not overwrite:
        raise InputError(f"{dest}: output folder already exists and is not empty; "
                         "pass --overwrite to replace it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.partial-"))
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    os.chmod(stage, 0o777 & ~_umask())  # mkdtemp creates 0700; give the folder normal permissions
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
    os.replace(stage, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
