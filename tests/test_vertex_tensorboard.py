"""Per-epoch scalars to a Vertex AI TensorBoard instance: the real aiplatform client (REST) sends them to a
local stand-in for the TensorboardService and Google's token endpoint, and the tests read what arrived."""

from __future__ import annotations

import threading

import pandas as pd
import pytest

from histoxai import vertex_tensorboard
from histoxai.cli import main
from histoxai.errors import InputError
from histoxai.vertex_tensorboard import resource_id, run_id, upload_history
from tests.fake_service import FakeService
from tests.vertex_recorder import service_account_key

TB = "projects/histoxai-test/locations/europe-west4/tensorboards/123"
DENIED = "projects/histoxai-test/locations/europe-west4/tensorboards/403"
NAME = r"projects/[^/]+/locations/[^/]+/tensorboards/[^/:]+"


class TensorboardStandIn:
    """The TensorboardService routes aiplatform's resources use, over one in-memory store."""

    def __init__(self):
        self.resources: dict[str, dict] = {TB: {"name": TB}}  # resource name -> resource
        self.points: dict[str, list[dict]] = {}  # time series name -> data points as written
        self.release = threading.Event()  # a stalled route waits for it
        lock = threading.Lock()

        def created(kind, id_param):
            def respond(match, body, query):
                with lock:
                    name = f"{match.group(1)}/{kind}/{query[id_param][0]}"
                    if match.group(1) not in self.resources:
                        return fetched(match, body, query)
                    if name in self.resources:
                        return 409, {"error": {"code": 409, "message": f"{name} already exists",
                                               "status": "ALREADY_EXISTS"}}
                    self.resources[name] = {**body, "name": name}
                    return self.resources[name]
            return respond

        def fetched(match, body, query):
            name = match.group(1)
            if name not in self.resources:
                return 404, {"error": {"code": 404, "message": f"{name} not found", "status": "NOT_FOUND"}}
            return self.resources[name]

        def series_created(match, body, query):
            with lock:
                name = f"{match.group(1)}/timeSeries/{len(self.points) + 1}"
                self.points[name] = []
                self.resources[name] = {**body, "name": name}
                return self.resources[name]

        def series_listed(match, body, query):
            prefix = f"{match.group(1)}/timeSeries/"
            return {"tensorboardTimeSeries": [r for n, r in self.resources.items() if n.startswith(prefix)]}

        def batch_read(match, body, query):
            return {"timeSeriesData": [
                {"tensorboardTimeSeriesId": name.rsplit("/", 1)[1], "valueType": "SCALAR",
                 "values": self.points[name]} for name in query.get("timeSeries", [])]}

        def written(match, body, query):
            for data in body["timeSeriesData"]:
                series = f"{match.group(1)}/timeSeries/{data['tensorboardTimeSeriesId']}"
                self.points[series] += data["values"]
            return {}

        def denied(match, body, query):
            return 403, {"error": {"code": 403, "message": "Permission 'aiplatform.tensorboardExperiments."
                                   "create' denied on resource", "status": "PERMISSION_DENIED"}}

        def stalled(match, body, query):
            self.release.wait(30)
            return {}

        run = rf"/v1/({NAME}/experiments/[^/]+/runs/[^/:]+)"
        self.service = FakeService({
            ("POST", "/token"): lambda m, b, q: {"access_token": "token-1", "expires_in": 3600,
                                                 "token_type": "Bearer"},
            ("POST", rf"/v1/({DENIED})/.*"): denied,
            ("POST", r"/v1/(projects/[^/]+/locations/[^/]+/tensorboards/stall)/.*"): stalled,
            ("POST", rf"/v1/({NAME})/experiments"): created("experiments", "tensorboardExperimentId"),
            ("POST", rf"/v1/({NAME}/experiments/[^/:]+)/runs"): created("runs", "tensorboardRunId"),
            ("POST", rf"{run}/timeSeries"): series_created,
            ("GET", rf"{run}/timeSeries"): series_listed,
            ("POST", rf"{run}:write"): written,
            ("GET", rf"/v1/({NAME}):batchRead"): batch_read,
            ("GET", r"/v1/(.+)"): fetched,
        })
        self.url = self.service.url

    def scalars(self, run: str) -> dict[str, dict[int, float]]:
        """Time series display name -> {step: value} of a run."""
        out = {}
        for name, points in self.points.items():
            if name.startswith(f"{run}/timeSeries/"):
                steps = [int(p["step"]) for p in points]
                assert len(steps) == len(set(steps)), f"{name}: a step written twice"
                out[self.resources[name]["displayName"]] = {int(p["step"]): p["scalar"].get("value", 0.0)
                                                           for p in points}
        return out


@pytest.fixture
def vertex(tmp_path, monkeypatch):
    standin = TensorboardStandIn()
    key = service_account_key(tmp_path / "key.json", f"{standin.url}/token")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    monkeypatch.setenv(vertex_tensorboard.ENDPOINT_ENV, standin.url)
    yield standin
    standin.release.set()
    standin.service.close()


def _history() -> pd.DataFrame:
    """Two frozen and two fine-tuning epochs of a multi-task model, as history.csv holds them."""
    return pd.DataFrame({
        "epoch": [1, 2, 3, 4], "phase": ["frozen", "frozen", "finetune", "finetune"],
        "phase_epoch": [1, 2, 1, 2], "learning_rate": [1e-3, 1e-3, 5e-5, 4e-5],
        "loss": [0.9, 0.7, 0.5, 0.4], "MD_r2": [0.1, 0.2, 0.4, 0.5], "FA_r2": [0.0, 0.1, 0.3, 0.35],
        "val_loss": [1.0, 0.8, 0.6, 0.55], "val_MD_r2": [0.05, 0.15, 0.3, 0.32],
        "val_FA_r2": [-0.1, 0.05, 0.2, 0.25], "seconds": [3.1, 2.9, 4.0, 4.1]})


def test_each_epoch_arrives_at_its_global_step_once(vertex):
    sent = upload_history(_history(), tensorboard=TB, experiment="histoxai-20250101-120000",
                          run="multitask-md-fa")
    run = f"{TB}/experiments/histoxai-20250101-120000/runs/multitask-md-fa"
    assert sent["run"] == run and (sent["written"], sent["skipped"]) == (4 * 8, 0)
    assert sent["url"] == ("https://europe-west4.tensorboard.googleusercontent.com/experiment/"
                           f"{TB.replace('/', '+')}+experiments+histoxai-20250101-120000")
    got = vertex.scalars(run)
    assert set(got) == {"learning_rate", "loss", "MD_r2", "FA_r2", "val_loss", "val_MD_r2", "val_FA_r2",
                        "finetune_phase"}  # epoch, phase_epoch and seconds are bookkeeping
    history = _history()
    for column in ("loss", "val_loss", "MD_r2", "val_FA_r2", "learning_rate"):
        assert got[column] == pytest.approx(dict(zip(history["epoch"], history[column], strict=True)))
    assert got["finetune_phase"] == {1: 0.0, 2: 0.0, 3: 1.0, 4: 1.0}
    (create,) = vertex.service.find("POST", rf"/v1/{TB}/experiments")
    assert create["headers"]["authorization"].startswith("Bearer ")  # the service account signed it
    assert create["query"]["tensorboardExperimentId"] == ["histoxai-20250101-120000"]

    # a retried task uploads the same history again: nothing doubles, nothing fails
    again = upload_history(_history(), tensorboard=TB, experiment="histoxai-20250101-120000",
                           run="multitask-md-fa")
    assert (again["written"], again["skipped"]) == (0, 4 * 8)
    assert vertex.scalars(run) == got
    # a resumed one with one more epoch adds only that epoch
    longer = pd.concat([_history(), _history().tail(1).assign(epoch=5, phase_epoch=3, loss=0.3)])
    more = upload_history(longer, tensorboard=TB, experiment="histoxai-20250101-120000",
                          run="multitask-md-fa")
    assert more["written"] == 8 and vertex.scalars(run)["loss"][5] == pytest.approx(0.3)


def test_a_second_model_joins_the_same_experiment(vertex):
    upload_history(_history(), tensorboard=TB, experiment="job-1", run="multitask-md-fa")
    single = _history().drop(columns=["FA_r2", "val_FA_r2"]).rename(columns={"MD_r2": "CC_r2",
                                                                             "val_MD_r2": "val_CC_r2"})
    upload_history(single, tensorboard=TB, experiment="job-1", run="single-task-cc")
    assert "val_CC_r2" in vertex.scalars(f"{TB}/experiments/job-1/runs/single-task-cc")
    assert len(vertex.service.find("POST", rf"/v1/{TB}/experiments")) == 2  # the second got 409, then read it


@pytest.mark.parametrize(("tensorboard", "message"), [
    (DENIED, r"^tensorboard .*/403: Vertex AI refused the request: 403 Permission .* denied on resource;"),
    (f"{TB}9", r"^tensorboard .*/1239: Vertex AI refused the request: 404 projects/.*/1239 not found;"),
])
def test_a_refused_request_is_one_input_error(vertex, tensorboard, message):
    with pytest.raises(InputError, match=message) as err:
        upload_history(_history(), tensorboard=tensorboard, experiment="e", run="r")
    assert len(str(err.value).splitlines()) == 1


def test_an_unreachable_or_stalled_service_fails_in_bounded_time(vertex, monkeypatch):
    monkeypatch.setenv(vertex_tensorboard.ENDPOINT_ENV, "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(InputError, match=r"^tensorboard .*: Vertex AI unreachable after 3 attempts"):
        upload_history(_history(), tensorboard=TB, experiment="e", run="r")
    monkeypatch.setenv(vertex_tensorboard.ENDPOINT_ENV, vertex.url)
    monkeypatch.setenv(vertex_tensorboard.DEADLINE_ENV, "1")
    with pytest.raises(InputError, match=r"did not answer within 1 s"):
        upload_history(_history(), tensorboard=f"{TB[:-3]}stall", experiment="e",
                       run="r")


def test_names_are_checked_and_made_valid_ids():
    with pytest.raises(InputError, match=r"^tensorboard 'tensorboards/1': expected .*projects/PROJECT"):
        upload_history(_history(), tensorboard="tensorboards/1", experiment="e", run="r")
    with pytest.raises(InputError, match=r"^run '__': expected a name with letters or digits"):
        upload_history(_history(), tensorboard=TB, experiment="e", run="__")
    with pytest.raises(InputError, match=r"^history: no 'epoch' column"):
        upload_history(_history().drop(columns="epoch"), tensorboard=TB, experiment="e", run="r")
    assert resource_id("HistoXAI Run_2025/01", "x") == "histoxai-run-2025-01"
    assert len(resource_id("a" * 300, "x")) == 128
    assert run_id(("MD", "FA")) == "multitask-md-fa" and run_id("CC") == "single-task-cc"


def test_histoxai_train_writes_its_epochs_to_the_tensorboard(vertex, tmp_path, capsys):
    from tests.train_data import write_blob_manifest

    data = write_blob_manifest(tmp_path / "data", n=48, size=32, seed=2)
    settings = {"backbone": "tiny", "weights": "null", "image_size": 32, "frozen_epochs": 1,
                "finetune_epochs": 1, "lr_schedule": "none", "dense_units": 8, "feature_units": 4}
    argv = ["train", "--config", "demo", "--data", str(data), "--targets", "MD,FA", "--out",
            str(tmp_path / "Demo_Run"), "--tensorboard", TB]
    assert main(argv + [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]) == 0
    assert "scalars written, 0 already there" in capsys.readouterr().out
    got = vertex.scalars(f"{TB}/experiments/demo-run/runs/multitask-md-fa")
    assert set(got["val_MD_r2"]) == {1, 2} and got["finetune_phase"] == {1: 0.0, 2: 1.0}

    # a wrong name fails at once, before any training
    assert main(["train", "--data", str(data), "--targets", "CC", "--out", str(tmp_path / "x"),
                 "--tensorboard", "tb-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--tensorboard 'tb-1': expected" in err
    assert not (tmp_path / "x").exists()
