"""Shared fixtures: a real GCS emulator on loopback, and small phantom samples; slow files run first."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from histoxai import gcs
from tests.loopback import free_port, wait_until_listening

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(items):
    """Files that hold a test marked slow go first (in their own order): under `--dist loadfile` a file
    runs whole on one worker, and the longest one, started last, left the other workers idle at the end.
    xdist keeps this order with --no-loadscope-reorder (`make test`); by default it sends the files with
    the most tests first, which put the two-test pipeline runs last."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)


def pytest_collection_finish(session):
    """What collection imported (TensorFlow, Keras, KFP: some 400,000 objects) lives as long as the worker:
    frozen, the full garbage collections that Keras's clear_session and the growing heap start skip it."""
    gc.freeze()


@pytest.fixture(autouse=True, scope="module")
def _freeze_what_earlier_files_left():
    """TensorFlow keeps the graphs of earlier files' models alive (some 300,000 objects after four training
    files); collected once and frozen at each file's start, they are not scanned again by every
    collection in the files after (a worker's full collections took 35 s, then 16 s)."""
    gc.collect()
    gc.freeze()


def pytest_sessionfinish(session):
    gc.unfreeze()  # the exit handlers that look for live tf.data iterators see every object again


@pytest.fixture(autouse=True, scope="session")
def _streamlit_leaves_the_workers_keras_alone():
    """Before each script run Streamlit clears Keras's session when keras is imported: in a worker that has
    trained models that is a full garbage collection per AppTest run (0.2 s or more; the app's test files
    took 27 s less without it). The app itself never imports Keras or TensorFlow (test_layers checks), so
    here only matplotlib's figures close."""
    from streamlit.runtime.scriptrunner import script_runner

    def close_figures():
        if "matplotlib.pyplot" in sys.modules:
            sys.modules["matplotlib.pyplot"].close("all")

    original = script_runner._clean_problem_modules
    script_runner._clean_problem_modules = close_figures
    yield
    script_runner._clean_problem_modules = original


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
    """Starts gcp-storage-emulator (with write preconditions) on a free loopback port; yields its host URL.

    STORAGE_EMULATOR_HOST is set for the test process and its children, so the real
    google-cloud-storage client (and every `histoxai` subprocess) talks to it.
    """
    port = free_port()
    workdir = tmp_path_factory.mktemp("gcs-emulator")
    log = open(workdir / "emulator.log", "wb")
    proc = subprocess.Popen(  # the emulator with GCS's write preconditions (tests/gcs_emulator.py)
        [sys.executable, str(REPO / "tests" / "gcs_emulator.py"), "start", "--host", "127.0.0.1",
         "--port", str(port), "--in-memory", "-q"],
        cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
    )
    wait_until_listening(port, proc, "gcs emulator", workdir / "emulator.log", timeout_s=30)
    host = f"http://127.0.0.1:{port}"
    old = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT")}
    os.environ["STORAGE_EMULATOR_HOST"] = host
    os.environ["GOOGLE_CLOUD_PROJECT"] = "histoxai-test"
    gcs.reset_client()
    yield host
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    gcs.reset_client()
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


def _new_bucket() -> str:
    from google.cloud import storage as gcs

    name = f"test-{uuid.uuid4().hex[:12]}"
    gcs.Client(project="histoxai-test").create_bucket(name)
    return f"gs://{name}"


@pytest.fixture
def gcs_bucket(gcs_emulator):
    """A fresh, empty bucket in the emulator; yields 'gs://<name>'."""
    return _new_bucket()


@pytest.fixture(scope="module")
def gcs_module_bucket(gcs_emulator):
    """A fresh, empty bucket shared by one module's tests (for module-scoped fixtures)."""
    return _new_bucket()


@pytest.fixture(scope="session")
def shared_task_server():
    """One task server (pipelines/task_fork.py) for every local pipeline run of a worker: each server's
    start imports TensorFlow, some 5 CPU-seconds, as each task that kfp starts afresh does. Tasks get the
    caller's environment with each request, so the server may start before the GCS emulator."""
    from histoxai.pipelines.task_fork import task_server

    with task_server() as server:
        yield server


@pytest.fixture
def python_forked(shared_task_server, tmp_path_factory):
    """`python_forked(argv, env=..., cwd=...)` runs `python ARGV` as subprocess.run(..., capture_output=True,
    text=True) would, but forked from the worker's task server, which has imported TensorFlow (some
    5 CPU-seconds that each fresh interpreter spends again); a fresh interpreter when the server cannot
    take it. For the commands that kill or stop themselves and check what they left; what must start
    afresh (start-up messages, interpreter exit) keeps subprocess.run."""

    def run(argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None):
        env = dict(os.environ if env is None else env)
        folder = tmp_path_factory.mktemp("forked")
        stdout, stderr = folder / "stdout", folder / "stderr"
        ran = shared_task_server.python(argv, env, stdout, stderr, cwd=cwd)
        if ran is None:
            return subprocess.run([sys.executable, *argv], env=env, cwd=cwd, capture_output=True, text=True,
                                  timeout=300)
        printed = [path.read_text(errors="replace") if path.exists() else "" for path in (stdout, stderr)]
        return subprocess.CompletedProcess([sys.executable, *argv], ran[0], *printed)

    return run


@pytest.fixture(scope="session")
def tools() -> Path:
    """bin/ of the linters' environment (.venv-tools: `make tools`, pinned in infra/requirements-tools.txt and
    installed by hash), brought up to date when missing or stale, so the infrastructure tests also run
    under a bare `pytest`."""
    subprocess.run(["make", "-s", "tools"], cwd=REPO, check=True)
    return REPO / ".venv-tools" / "bin"
