"""The retraining function (infra/retrain/main.py) served by functions-framework on loopback, as Cloud Run
runs it, with storage finalize CloudEvents delivered to it as Eventarc sends them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import requests

from tests.loopback import free_port, wait_until_listening

REPO = Path(__file__).resolve().parents[1]
PROJECT = "histoxai-test"


class FunctionServer:
    """infra/retrain/main.py under functions-framework, as Cloud Run runs it (tests/retrain_server.py)."""

    def __init__(self, env: dict, record: Path, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "retrain_server.py"), str(self.port), str(record)],
            env={**os.environ, **env}, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=REPO)
        wait_until_listening(self.port, self.proc, "function server", log, timeout_s=120)

    def deliver(self, bucket: str, name: str, event_id: str | None = None) -> requests.Response:
        """A storage finalize CloudEvent (binary mode, as Eventarc sends it) for the object as it is now."""
        from google.cloud import storage as gcs

        blob = gcs.Client(project=PROJECT).bucket(bucket).get_blob(name)
        headers = {"ce-id": event_id or uuid.uuid4().hex, "ce-specversion": "1.0",
                   "ce-type": "google.cloud.storage.object.v1.finalized",
                   "ce-source": f"//storage.googleapis.com/projects/_/buckets/{bucket}",
                   "ce-subject": f"objects/{name}", "ce-time": blob._properties["updated"],
                   "Content-Type": "application/json"}
        return requests.post(self.url, data=json.dumps(blob._properties), headers=headers, timeout=300)

    def lines(self) -> list[dict]:
        """The structured log lines the function wrote."""
        text = self.log.read_text()
        return [json.loads(line) for line in text.splitlines() if line.startswith('{"severity"')]

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)
