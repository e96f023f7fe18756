"""What the steps' KFP wrappers share: where an artifact lives, and the code version it was made with.

`location(artifact)` is the one place that decides how a component body addresses an artifact:
on Vertex AI the artifact's URI is gs:// and the step reads and writes it through the GCS client
(histoxai.storage publishes outputs whole); under kfp.local and open-source KFP the step uses the
local path (KFP's launcher syncs it with MinIO or S3 around the step).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from histoxai import __version__, storage

CODE_VERSION_ENV = "HISTOXAI_CODE_VERSION"  # set on every task at compile time (pipelines/pipeline.py)
REPO = Path(__file__).resolve().parents[1]


def location(artifact) -> str:
    """The artifact's gs:// URI when it has one, else its local path."""
    uri = str(artifact.uri or "")
    return uri if storage.is_gcs(uri) else artifact.path


def code_version() -> str:
    """Package version plus the git commit when run from a checkout: '0.1.0+g1a2b3c4d5e6f[.dirty]'."""
    if os.environ.get(CODE_VERSION_ENV):
        return os.environ[CODE_VERSION_ENV]
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"],
                                capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__  # an installed package without its git checkout
    return f"{__version__}+g{commit}{'.dirty' if dirty else ''}"
