"""Loopback helpers the tests' local servers share (the GCS emulator, the review app, the retraining
function)."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_listening(port: int, proc: subprocess.Popen, what: str, log: Path, timeout_s: float) -> None:
    """Returns once 127.0.0.1:port accepts connections; RuntimeError with `what` and the log's text when
    proc exits first or timeout_s pass (proc is then killed)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited: {log.read_text()}") from None
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{what} did not start within {timeout_s:.0f} s: {log.read_text()}")
