"""Output folders and scratch space that leave nothing behind: writability, staged outputs, stale leftovers.

Steps write their outputs through `staged` (histoxai.storage.staged_output, which builds a local output
in a hidden `.NAME.partial-*` folder beside it and swaps it into place through `.NAME.old-PID`) and
keep work files in `scratch_dir` folders (`histoxai-KIND-pidPID-*` in the temporary folder). An
exception cleans both up; a killed process cannot, so each run first removes what dead runs left:
a partial folder nobody holds (its owner keeps an flock on it while it lives), an old-PID folder whose
process is gone (restored to NAME when the kill came between the two renames, so nothing the user had
is lost) and scratch folders whose PID is gone and whose lock is free.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from histoxai import storage
from histoxai.errors import InputError

SCRATCH = re.compile(r"histoxai-.+-pid(?P<pid>\d+)-")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _hold(path: Path) -> int:
    """Lock a folder for as long as the returned descriptor stays open (the kernel drops it on exit)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def _held(path: Path) -> bool:
    """Whether a live process holds the folder's lock."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def check_writable(uri: str | os.PathLike, option: str = "--out") -> None:
    """A local output path must be a folder (or not exist yet) under a folder this process can write in;
    otherwise one InputError naming it. gs:// URIs are checked by the storage calls themselves."""
    uri = str(uri)
    if storage.is_gcs(uri):
        return
    path = Path(uri).absolute()
    if path.exists() and not path.is_dir():
        raise InputError(f"{option} {uri}: exists and is not a folder; expected an output folder path")
    ancestor = path if path.exists() else path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"{option} {uri}: {ancestor} is a file, not a folder; expected an output folder "
                         "path in a writable location")
    try:  # os.access says yes to root everywhere: only creating something tells
        os.rmdir(tempfile.mkdtemp(dir=ancestor, prefix=".histoxai-probe-"))
    except OSError as err:
        raise InputError(f"{option} {uri}: cannot create anything in {ancestor} ({err.strerror}); expected "
                         "an output folder in a writable location") from None


def clear_stale_output(uri: str | os.PathLike) -> list[str]:
    """Remove what a killed run left beside a local output folder; returns what it removed or restored."""
    uri = str(uri)
    if storage.is_gcs(uri):
        return []
    dest = Path(uri)
    if not dest.parent.is_dir():
        return []
    done = []
    for entry in sorted(dest.parent.glob(f".{dest.name}.*")):
        tail = entry.name[len(dest.name) + 2:]
        if tail.startswith("partial-") and entry.is_dir() and not _held(entry):
            shutil.rmtree(entry, ignore_errors=True)
            done.append(f"removed {entry}")
        elif (old := re.fullmatch(r"old-(\d+)", tail)) and entry.is_dir() and not pid_alive(int(old[1])):
            if dest.exists():  # killed after the new output was in place: the old one was going anyway
                shutil.rmtree(entry, ignore_errors=True)
                done.append(f"removed {entry}")
            else:  # killed between the two renames: the previous output comes back
                os.replace(entry, dest)
                done.append(f"restored {dest} from {entry}")
    for line in done:
        print(f"left by an interrupted run: {line}", flush=True)
    return done


@contextlib.contextmanager
def staged(uri: str | os.PathLike, *, overwrite: bool = False, commit_last: str | None = None,
           option: str = "--out") -> Iterator[Path]:
    """storage.staged_output with a writability check, stale leftovers cleared first and the local
    stage locked while this process builds it (so a later run knows it is alive)."""
    uri = str(uri)
    check_writable(uri, option)
    clear_stale_output(uri)
    lock = None
    try:
        with contextlib.ExitStack() as stack:
            try:
                stage = stack.enter_context(storage.staged_output(uri, overwrite=overwrite,
                                                                  commit_last=commit_last))
            except OSError as err:
                raise InputError(f"{option} {uri}: cannot create the output there ({err.strerror}); "
                                 "expected an output folder in a writable location") from None
            if not storage.is_gcs(uri):
                lock = _hold(stage)  # held until the output is in place
            yield stage
    finally:
        if lock is not None:
            os.close(lock)


@contextlib.contextmanager
def scratch_dir(kind: str) -> Iterator[Path]:
    """A temporary folder `histoxai-KIND-pidPID-*`, locked while it lives and removed on exit."""
    path = Path(tempfile.mkdtemp(prefix=f"histoxai-{kind}-pid{os.getpid()}-"))
    fd = _hold(path)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)


def clear_stale_scratch() -> list[str]:
    """Remove scratch folders of dead processes from the temporary folder; returns their paths."""
    root = Path(tempfile.gettempdir())
    removed = []
    for entry in sorted(root.glob("histoxai-*-pid*")):
        match = SCRATCH.match(entry.name)
        if match and entry.is_dir() and not pid_alive(int(match["pid"])) and not _held(entry):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(str(entry))
    return removed
