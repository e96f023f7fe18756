"""Helpers shared by the benchmarks: wall time and peak memory of a command, the real-scale phantom."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

# A small Python process forks the command and reports its peak RSS. Measured from the bench process
# itself, wait4's figure would never be below the bench's own size: Linux carries a process's peak RSS
# across fork and exec, and the bench holds TensorFlow.
_LAUNCHER = """import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as fh:
    fh.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(args: list[str]) -> dict:
    """Run a command; return its wall time and the peak RSS of the process (MiB)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        peak, log = Path(tmp) / "peak", Path(tmp) / "stderr"
        start = time.perf_counter()
        with open(log, "wb") as stderr:  # a file, not a pipe: progress bars cannot fill it and block
            code = subprocess.call([sys.executable, "-c", _LAUNCHER, str(peak), *args],
                                   stdout=subprocess.DEVNULL, stderr=stderr)
        wall = time.perf_counter() - start
        if code != 0:
            sys.stderr.write(log.read_bytes().decode(errors="replace")[-4000:])
            raise RuntimeError(f"benchmark command failed: {' '.join(map(str, args))}")
        return {"wall_s": wall, "peak_rss_mib": int(peak.read_text()) / 1024}


REAL_SCALE_FOLDER = "phantom-3-80x80-360px"  # under the results folder; run.py removes it at the end


def real_scale_phantom(work: Path) -> tuple[Path, dict]:
    """Phantom sample 3 cropped to 80 x 80 voxels at 360 px (a 28,800 px square slide, 2.5 GB of pixels),
    rendered once per `make bench` beside the sections' work folders and shared by the sections that
    ingest it; returns the sample folder and the render's wall time and peak RSS."""
    import json
    import shutil

    folder = Path(work).parent / REAL_SCALE_FOLDER
    done = folder / "render.json"
    if not done.exists():
        shutil.rmtree(folder, ignore_errors=True)
        measured = run_measured([sys.executable, "-m", "histoxai.cli", "phantom", "--out", str(folder),
                                 "--samples", "3", "--crop", "80x80", "--pixels-per-voxel", "360"])
        done.write_text(json.dumps(measured))
    return folder / "3", json.loads(done.read_text())
