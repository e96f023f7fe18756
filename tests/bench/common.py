"""Helpers shared by the benchmarks: wall time and peak memory of a child process."""

from __future__ import annotations

import os
import subprocess
import sys
import time


def run_measured(args: list[str]) -> dict:
    """Run a command; return its wall time and the peak RSS of the process (MiB)."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = b""
    # wait4 gives this child's own resource usage, including its peak resident set.
    _, status, usage = os.wait4(proc.pid, 0)
    stderr = proc.stderr.read()
    proc.stderr.close()
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.stderr.write(stderr.decode(errors="replace")[-4000:])
        raise RuntimeError(f"benchmark command failed: {' '.join(args)}")
    return {"wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024}
