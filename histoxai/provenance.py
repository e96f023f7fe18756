"""Where a measured figure came from: command, date (UTC), device and git commit, stamped once."""

from __future__ import annotations

import datetime
import subprocess
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1]  # the checkout, for an editable install


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(SOURCE), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def commit() -> dict:
    """The checkout's commit and whether tracked files differ from it ("unknown" outside a checkout)."""
    head = _git("rev-parse", "HEAD")
    if not head:
        return {"commit": "unknown", "dirty": None}
    return {"commit": head, "dirty": bool(_git("status", "--porcelain", "--untracked-files=no"))}


def stamp(command: str, device: str | None = None) -> dict:
    """Provenance of figures measured now: command, date, device (training.device_name, which imports
    TensorFlow, unless the caller knows it), commit."""
    if device is None:
        from histoxai.console import import_tensorflow
        from histoxai.training import device_name

        import_tensorflow()  # without its start-up notices, before device_name imports it
        device = device_name()
    return {"command": command, "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "device": device, **commit()}
