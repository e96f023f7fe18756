"""Vertex AI's final submit call, recorded instead of sent: the one thing the retraining tests replace.

`install(record_file)` swaps aiplatform.PipelineJob.submit for a recorder. Everything before it runs
for real (credentials, template loading and validation by the aiplatform client, parameter checks).
The recorder appends the job as Vertex AI would receive it to the JSON-lines file, and refuses a job
id it has seen as Vertex AI does: with the error the REST client raises for a 409 ALREADY_EXISTS answer
(a Conflict, not an AlreadyExists; tests/test_retrain_http.py sends that answer over HTTP).
`service_account_key` writes a key file that google-auth loads without any network call (the token
endpoint is never reached).
"""

from __future__ import annotations

import fcntl
import json
from pathlib import Path


def install(record_file: str | Path, setattr=setattr) -> None:
    """Pass pytest's monkeypatch.setattr to undo the swap after a test."""
    from google.cloud import aiplatform

    def submit(self, service_account=None, **_):
        with open(record_file, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # several servers may share the file
            fh.seek(0)
            if any(json.loads(line)["job_id"] == self.job_id for line in fh if line.strip()):
                raise already_exists(f"{self._parent}/pipelineJobs/{self.job_id}")
            fh.write(json.dumps({"job_id": self.job_id, "service_account": service_account,
                                 "job": self.to_dict()}) + "\n")
        location = f"projects/{self.project}/locations/{self.location}"
        self._gca_resource.name = f"{location}/pipelineJobs/{self.job_id}"

    setattr(aiplatform.PipelineJob, "submit", submit)


def already_exists(name: str) -> Exception:
    """What aiplatform's REST transport raises when Vertex AI answers a create with 409 ALREADY_EXISTS."""
    import requests
    from google.api_core import exceptions

    response = requests.Response()
    response.status_code = 409
    response._content = json.dumps({"error": {"code": 409, "message": f"PipelineJob {name} already exists.",
                                              "status": "ALREADY_EXISTS"}}).encode()
    response.request = requests.Request("POST", f"https://aiplatform.googleapis.com/v1/{name}").prepare()
    return exceptions.from_http_response(response)


def recorded(record_file: str | Path) -> list[dict]:
    path = Path(record_file)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def service_account_key(path: Path, token_uri: str = "http://127.0.0.1:9/token") -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.write_text(json.dumps({
        "type": "service_account", "private_key_id": "k1", "private_key": key.decode(), "client_id": "1",
        "client_email": "submitter@histoxai-test.iam.gserviceaccount.com", "token_uri": token_uri}))
    return path
