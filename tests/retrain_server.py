"""The retraining function as deployed (infra/retrain/main.py) under functions-framework, with Vertex AI's
submit call recorded (tests/vertex_recorder.py): `python tests/retrain_server.py PORT RECORD_FILE`."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from functions_framework._cli import _cli  # noqa: E402

from tests import vertex_recorder  # noqa: E402

if __name__ == "__main__":
    port, record_file = sys.argv[1:3]
    vertex_recorder.install(record_file)
    _cli.main(["--source", str(REPO / "infra" / "retrain" / "main.py"), "--target", "on_sample_uploaded",
               "--host", "127.0.0.1", "--port", port])
