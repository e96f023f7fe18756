"""A training's per-epoch scalars (history.csv) written to a Vertex AI TensorBoard instance, so that they
show in the Vertex AI TensorBoard UI next to the run.

`upload_history` creates (or reuses) a TensorBoard experiment and run, one scalar time series per
history column (loss, val_loss, R² per target, learning rate, ...) plus `finetune_phase` (0 frozen,
1 fine-tuning), and writes each epoch at its global step (counted across both phases). It runs after a
training, from history.csv, not from a live callback: a retried or resumed task uploads the same rows
again, and points already there are skipped, so a retry neither duplicates nor loses a step, and a
TensorBoard outage cannot stop a training. Refused requests, missing credentials and an unreachable
service become one InputError. The endpoint is the instance's region's unless `api_endpoint` or
$HISTOXAI_VERTEX_ENDPOINT names another (a private one). The whole upload, retries included, is bounded by
HISTOXAI_TENSORBOARD_DEADLINE_S (default 300) seconds, because the client itself waits without limit.
"""

from __future__ import annotations

import os
import re
import threading
import time

from histoxai.errors import InputError

DEADLINE_ENV = "HISTOXAI_TENSORBOARD_DEADLINE_S"
ENDPOINT_ENV = "HISTOXAI_VERTEX_ENDPOINT"  # another Vertex AI endpoint, as `histoxai submit` takes it
ATTEMPTS = 3  # transient failures (5xx, 429, connection errors) are retried, the upload being idempotent
CREATE_TIMEOUT_S = 30.0
BOOKKEEPING = ("epoch", "phase", "phase_epoch", "seconds")  # history columns that are not scalars
PHASE_SCALAR = "finetune_phase"
_TENSORBOARD = re.compile(r"projects/([^/]+)/locations/([^/]+)/tensorboards/([^/]+)")
_MAX_ID = 128


def parse_tensorboard(resource: str, what: str = "tensorboard") -> tuple[str, str]:
    """(project, location) of a TensorBoard resource name, or an InputError naming `what`."""
    match = _TENSORBOARD.fullmatch((resource or "").strip())
    if not match:
        raise InputError(f"{what} {resource!r}: expected a Vertex AI TensorBoard resource name "
                         "projects/PROJECT/locations/REGION/tensorboards/ID")
    return match.group(1), match.group(2)


def resource_id(name: str, what: str) -> str:
    """`name` as a TensorBoard experiment or run id: lowercase letters, digits and '-', at most 128."""
    text = re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-")
    text = text[:_MAX_ID].rstrip("-")
    if not text:
        raise InputError(f"{what} {name!r}: expected a name with letters or digits "
                         "(a Vertex AI TensorBoard id is made of them)")
    return text


def run_id(targets) -> str:
    """The TensorBoard run of a model: its kind and targets, e.g. multitask-md-fa or single-task-cc."""
    names = [t.strip() for t in targets.split(",")] if isinstance(targets, str) else list(targets)
    names = [n for n in names if n]
    kind = "multitask" if len(names) > 1 else "single-task"
    return resource_id("-".join([kind, *names]), "targets")


def experiment_url(experiment: str) -> str:
    """The Vertex AI TensorBoard web app's page of an experiment resource name."""
    location = experiment.split("/")[3]
    return f"https://{location}.tensorboard.googleusercontent.com/experiment/{experiment.replace('/', '+')}"


def scalars(history) -> dict[int, dict[str, float]]:
    """Global epoch -> {time series name: value} from a history table (history.csv's columns)."""
    import pandas as pd

    if "epoch" not in history.columns:
        raise InputError(f"history: no 'epoch' column among {list(history.columns)}; "
                         "expected history.csv as `histoxai train` writes it")
    numeric = [c for c in history.columns
               if c not in BOOKKEEPING and pd.api.types.is_numeric_dtype(history[c])]
    out: dict[int, dict[str, float]] = {}
    for _, row in history.iterrows():
        values = {c: float(row[c]) for c in numeric if pd.notna(row[c])}
        if "phase" in history.columns and pd.notna(row["phase"]):
            values[PHASE_SCALAR] = 0.0 if row["phase"] == "frozen" else 1.0
        out[int(row["epoch"])] = values
    return out


def upload_history(history, *, tensorboard: str, experiment: str, run: str, api_endpoint: str | None = None,
                   credentials=None) -> dict:
    """Write `history`'s per-epoch scalars to run `run` of experiment `experiment` (both made into
    valid ids) in the TensorBoard instance `tensorboard` (projects/P/locations/L/tensorboards/ID).

    Returns {"experiment": resource name, "run": resource name, "written": points sent, "skipped":
    points already there, "url": the experiment's page}.
    """
    project, location = parse_tensorboard(tensorboard)
    experiment, run = resource_id(experiment, "experiment"), resource_id(run, "run")
    points = scalars(history)
    if credentials is None:
        credentials = _default_credentials(tensorboard)
    # aiplatform keeps its settings process-wide: name every one, so none is left from an earlier call
    endpoint = (api_endpoint or os.environ.get(ENDPOINT_ENV) or f"{location}-aiplatform.googleapis.com")
    deadline = float(os.environ.get(DEADLINE_ENV) or 300)
    outcome: dict = {}

    def attempt():
        try:
            outcome["result"] = _retrying(lambda: _upload(points, tensorboard.strip(), experiment, run,
                                                          project, location, endpoint, credentials),
                                          tensorboard, time.monotonic() + deadline)
        except BaseException as err:  # handed to the caller's thread
            outcome["error"] = err

    # A daemon thread: the client sends its requests without a timeout, and a stalled endpoint would
    # otherwise hold the step (and the process's exit) forever.
    worker = threading.Thread(target=attempt, name="vertex-tensorboard-upload", daemon=True)
    worker.start()
    worker.join(deadline)
    if worker.is_alive():
        raise InputError(f"tensorboard {tensorboard}: Vertex AI did not answer within {deadline:g} s "
                         f"({endpoint}); set {DEADLINE_ENV} to wait longer")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _default_credentials(tensorboard: str):
    import google.auth
    from google.auth import exceptions as auth_exc

    try:
        credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    except auth_exc.DefaultCredentialsError as err:
        raise InputError(f"tensorboard {tensorboard}: no Google Cloud credentials; run `gcloud auth "
                         "application-default login` or set GOOGLE_APPLICATION_CREDENTIALS") from err
    return credentials


def _first_line(err) -> str:
    """An error's message, first line only, without the REST client's "POST https://...: " prefix."""
    text = str(getattr(err, "message", None) or err).strip()
    text = re.sub(r"^[A-Z]+ https?://\S+: ", "", text)
    return text.splitlines()[0] if text else type(err).__name__


def _retrying(upload, tensorboard: str, until: float) -> dict:
    """`upload()` with up to ATTEMPTS tries on transient failures; every failure as one InputError."""
    import requests
    from google.api_core import exceptions as api_exc
    from google.auth import exceptions as auth_exc

    transient = (api_exc.ServerError, api_exc.TooManyRequests, api_exc.DeadlineExceeded,
                 requests.ConnectionError, requests.Timeout, auth_exc.TransportError, ConnectionError)
    what = f"tensorboard {tensorboard}"
    for number in range(1, ATTEMPTS + 1):
        try:
            return upload()
        except auth_exc.RefreshError as err:
            raise InputError(f"{what}: the Google Cloud credentials were refused ({_first_line(err)}); "
                             "run `gcloud auth application-default login` again") from err
        except transient as err:
            pause = 0.5 * 2 ** (number - 1)
            if number == ATTEMPTS or time.monotonic() + pause >= until:
                raise InputError(f"{what}: Vertex AI unreachable after {number} attempts "
                                 f"({_first_line(err)})") from err
            time.sleep(pause)
        except api_exc.GoogleAPICallError as err:
            raise InputError(f"{what}: Vertex AI refused the request: {err.code} {_first_line(err)}; "
                             "expected an existing TensorBoard instance this account may write to") from err
    raise AssertionError("unreachable")


def _upload(points: dict, tensorboard: str, experiment: str, run: str, project: str, location: str,
            endpoint: str, credentials) -> dict:
    from google.api_core import exceptions as api_exc
    from google.cloud import aiplatform

    aiplatform.init(project=project, location=location, credentials=credentials, api_endpoint=endpoint,
                    api_transport="rest")
    try:
        tb_experiment = aiplatform.TensorboardExperiment.create(
            tensorboard_experiment_id=experiment, tensorboard_name=tensorboard, display_name=experiment,
            credentials=credentials, create_request_timeout=CREATE_TIMEOUT_S)
    except api_exc.Conflict:  # 409: an earlier model of the same pipeline run made it, or a retry
        tb_experiment = aiplatform.TensorboardExperiment(f"{tensorboard}/experiments/{experiment}",
                                                         credentials=credentials)
    try:
        tb_run = aiplatform.TensorboardRun.create(
            tensorboard_run_id=run, tensorboard_experiment_name=tb_experiment.resource_name,
            credentials=credentials, create_request_timeout=CREATE_TIMEOUT_S)
    except api_exc.Conflict:
        tb_run = aiplatform.TensorboardRun(f"{tb_experiment.resource_name}/runs/{run}",
                                           credentials=credentials)

    # Steps already in the run (a retry, or an upload cut short) are not written twice. A series'
    # read returns at most 1000 points, far more epochs than a training runs.
    there = {name: {point.step for point in data.values}
             for name, data in tb_run.read_time_series_data().items()}
    names = sorted({name for values in points.values() for name in values})
    existing = {series.display_name for series in aiplatform.TensorboardTimeSeries.list(
        tensorboard_run_name=tb_run.resource_name, credentials=credentials)}
    for name in names:
        if name not in existing:
            # write_tensorboard_scalar_data refuses a series that does not exist yet
            try:
                tb_run.create_tensorboard_time_series(display_name=name)
            except api_exc.Conflict:
                pass  # made meanwhile by another try; the write looks its id up again
    written = skipped = 0
    for step in sorted(points):
        missing = {name: value for name, value in points[step].items() if step not in there.get(name, ())}
        skipped += len(points[step]) - len(missing)
        if missing:
            tb_run.write_tensorboard_scalar_data(time_series_data=missing, step=step)
            written += len(missing)
    return {"experiment": tb_experiment.resource_name, "run": tb_run.resource_name, "written": written,
            "skipped": skipped, "url": experiment_url(tb_experiment.resource_name)}
