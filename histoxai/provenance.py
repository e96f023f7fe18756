"""Where a measured figure came from: command, date (UTC), device and git commit, stamped once."""

from __future__ import annotations

import datetime
import os
import subprocess
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1]  # the checkout, for an editable install


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(SOURCE), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def device_name() -> str:
    """The GPU model(s), or the CPU model from /proc/cpuinfo, with its core count and vector width."""
    from histoxai.console import import_tensorflow

    tf = import_tensorflow()  # without its start-up notices
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus]
        return f"{len(gpus)} x {names[0]}" if len(set(names)) == 1 else ", ".join(names)
    model, flags = "unknown", []
    try:
        with open("/proc/cpuinfo") as fh:
            fields = [line.split(":", 1) for line in fh if ":" in line]
        model = next((value.strip() for key, value in fields if key.strip() == "model name"), model)
        flags = next((value.split() for key, value in fields if key.strip() == "flags"), flags)
    except OSError:
        pass
    # the vector width picks oneDNN's kernels: a CPU's speed, and the last digits of its results
    vector = ", AVX-512" if "avx512f" in flags else ", AVX2" if "avx2" in flags else ""
    return f"CPU {model} ({os.cpu_count()} cores{vector})"


def commit() -> dict:
    """The checkout's commit and whether tracked files differ from it ("unknown" outside a checkout)."""
    head = _git("rev-parse", "HEAD")
    if not head:
        return {"commit": "unknown", "dirty": None}
    return {"commit": head, "dirty": bool(_git("status", "--porcelain", "--untracked-files=no"))}


def stamp(command: str, device: str | None = None) -> dict:
    """Provenance of figures measured now: command, date, device (device_name(), which imports
    TensorFlow, unless the caller knows it), commit."""
    return {"command": command, "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "device": device or device_name(), **commit()}
