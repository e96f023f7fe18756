"""Retraining under bad uploads: a poisoned sample is quarantined with its reason and the others still
train; ids, late events and permanent errors cannot keep the trigger busy; the registry's states are
managed by hand with `histoxai retrain --list / --quarantine / --release`."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from histoxai import layout, storage
from histoxai.cli import main as histoxai_main
from histoxai.pipelines import registry, retrain
from tests import vertex_recorder
from tests.samples import make_sample, write_sample
from tests.test_retrain import FunctionServer, cloud, sample_files, upload_sample  # noqa: F401 (fixtures)


def _poisoned(tmp_path, name: str, **changes):
    """A sample folder written from make_sample with some arrays changed."""
    return write_sample(tmp_path / name, make_sample(seed=11).with_(**changes))


@pytest.fixture
def by_hand(cloud, tmp_path, monkeypatch):  # noqa: F811 (the fixture imported above)
    for name, value in cloud["env"].items():
        monkeypatch.setenv(name, value)
    record = tmp_path / "submitted.jsonl"
    vertex_recorder.install(record, monkeypatch.setattr)
    samples_uri = f"gs://{cloud['bucket']}/poison-{tmp_path.name[-12:]}"
    settings = retrain.Settings(**{**retrain.Settings.from_env().__dict__, "samples_uri": samples_uri})
    return settings, record


def _ready(settings, sample: str) -> str:
    return str(storage.stat(storage.join(settings.samples_uri, sample, retrain.READY))[1])


def test_a_poisoned_upload_is_quarantined_and_the_others_still_train(by_hand, sample_files, tmp_path):  # noqa: F811
    settings, record = by_hand
    root = settings.samples_uri
    good = make_sample(seed=11)
    cut = write_sample(tmp_path / "cut", good)
    he = (cut / layout.HE_MAT).read_bytes()
    (cut / layout.HE_MAT).write_bytes(he[: len(he) * 6 // 10])  # an interrupted upload, header intact
    md = good.md.copy()
    md[np.argwhere(good.roi == 1)[0][0], np.argwhere(good.roi == 1)[0][1]] = 1e6
    poisoned = {
        "32": (cut, "truncated file"),
        "33": (_poisoned(tmp_path, "grid", dhe_mask=good.dhe_mask[:-1]), "dHE_mask has shape"),
        "34": (_poisoned(tmp_path, "float", he=good.he.astype(np.float32)), "HE is float32; expected uint8"),
        "35": (_poisoned(tmp_path, "md", md=md), "MR.MD is 1e+06 at 1 ROI voxel(s); expected 0 to 4"),
    }
    upload_sample(sample_files, f"{root}/31")
    assert retrain.retrain_sample(settings, "31", _ready(settings, "31")).status == "submitted"
    for sample, (folder, why) in poisoned.items():
        upload_sample(folder, f"{root}/{sample}")
        with pytest.raises(retrain.SampleRejected, match=re.escape(why)):
            retrain.retrain_sample(settings, sample, _ready(settings, sample))
    entries = registry.samples(root)
    for sample, (_, why) in poisoned.items():
        assert entries[sample]["state"] == "quarantined" and why in entries[sample]["reason"], entries[sample]
        assert entries[sample]["by"] == "check"
    assert len(vertex_recorder.recorded(record)) == 1  # no run for a rejected upload

    upload_sample(sample_files, f"{root}/36")  # the next good upload trains without the poisoned ones
    assert retrain.retrain_sample(settings, "36", _ready(settings, "36")).samples == ["31", "36"]
    last = vertex_recorder.recorded(record)[-1]
    assert last["job"]["runtimeConfig"]["parameterValues"]["samples"] == ["31", "36"]

    upload_sample(sample_files, f"{root}/33")  # a corrected upload of a quarantined sample: active again
    assert retrain.retrain_sample(settings, "33", _ready(settings, "33")).samples == ["31", "33", "36"]
    assert registry.samples(root)["33"]["state"] == "active" and "reason" not in registry.samples(root)["33"]


def test_unusable_ids_and_late_events_are_ignored(by_hand, sample_files):  # noqa: F811
    settings, record = by_hand
    long_id = "x" * 300
    with pytest.raises(retrain.SampleRejected, match=r"sample id rejected: .*\(300 characters\).* 1 to 64"):
        retrain.retrain_sample(settings, long_id, "1")
    with pytest.raises(retrain.SampleRejected, match="sample id rejected"):
        retrain.retrain_sample(settings, "tumour 7", "1")
    assert registry.samples(settings.samples_uri) == {}  # nothing registered for an unusable id

    upload_sample(sample_files, f"{settings.samples_uri}/41")
    first = _ready(settings, "41")
    storage.write_bytes(storage.join(settings.samples_uri, "41", retrain.READY), b"")  # uploaded again
    second = _ready(settings, "41")
    assert retrain.retrain_sample(settings, "41", second).status == "submitted"
    late = retrain.retrain_sample(settings, "41", first)  # the first upload's event arrives last
    assert late.status == "stale" and f"generation {second}" in late.note
    assert registry.samples(settings.samples_uri)["41"]["ready_generation"] == second
    assert len(vertex_recorder.recorded(record)) == 1


def test_permanent_errors_are_acknowledged_once(cloud, sample_files, tmp_path):  # noqa: F811
    """A misconfigured trigger logs one structured line and acknowledges the event (Eventarc would
    otherwise redeliver it for a day); an unusable id is acknowledged too."""
    bucket = cloud["bucket"]
    env = {**cloud["env"], "HISTOXAI_PIPELINE_TEMPLATE": f"gs://{bucket}/no-such-template.yaml"}
    server = FunctionServer(env, tmp_path / "submitted.jsonl", tmp_path / "function.log")
    try:
        upload_sample(sample_files, f"{cloud['samples_uri']}/51")
        assert server.deliver(bucket, "incoming/51/READY").status_code == 200
        storage.write_bytes(f"{cloud['samples_uri']}/{'y' * 200}/{retrain.READY}", b"")
        assert server.deliver(bucket, f"incoming/{'y' * 200}/READY").status_code == 200
        lines = server.lines()
    finally:
        server.close()
    (error,) = [line for line in lines if line["severity"] == "ERROR"]
    assert error["permanent"] is True and "no-such-template.yaml" in error["message"], error
    (warning,) = [line for line in lines if line["severity"] == "WARNING"]
    assert warning["permanent"] is True and "sample id rejected" in warning["message"]
    assert not vertex_recorder.recorded(tmp_path / "submitted.jsonl")


def test_retrain_list_quarantine_release(by_hand, sample_files, tmp_path, capsys):  # noqa: F811
    settings, record = by_hand
    root = settings.samples_uri
    for sample in ("61", "62"):
        upload_sample(sample_files, f"{root}/{sample}", ready=False)
    registering = ["retrain", "--register-only", "--sample", f"{root}/61", "--sample", f"{root}/62"]
    assert histoxai_main(registering) == 0
    capsys.readouterr()

    assert histoxai_main(["retrain", "--quarantine", "62", "--reason", "ingest: chunk 12 unreadable",
                          "--samples-uri", root]) == 0
    out = capsys.readouterr().out
    assert "62              quarantined  generation -  ingest: chunk 12 unreadable" in out, out
    upload_sample(sample_files, f"{root}/63")
    assert histoxai_main(["retrain", "--sample", f"{root}/63"]) == 0
    assert vertex_recorder.recorded(record)[-1]["job"]["runtimeConfig"]["parameterValues"]["samples"] == [
        "61", "63"]
    capsys.readouterr()

    assert histoxai_main(["retrain", "--release", "62", "--samples-uri", root]) == 0
    assert "62              active" in capsys.readouterr().out
    # a sample that still fails the check stays quarantined: release says why
    storage.write_bytes(f"{root}/61/{layout.HE_MAT}", storage.read_bytes(f"{root}/61/{layout.HE_MAT}")[:4000])
    histoxai_main(["retrain", "--quarantine", "61", "--reason", "slide replaced", "--samples-uri", root])
    capsys.readouterr()
    for argv, expected in [
        (["--release", "61"], "sample 61 rejected: "),
        (["--quarantine", "61"], "--reason: empty"),
        (["--quarantine", "99", "--reason", "x"], "sample 99: not in the registry"),
    ]:
        assert histoxai_main(["retrain", *argv, "--samples-uri", root]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, err
    assert registry.samples(root)["61"]["state"] == "quarantined"
    assert histoxai_main(["retrain", "--list", "--samples-uri", "not-a-bucket"]) == 2
    assert "--samples-uri 'not-a-bucket': expected gs://" in capsys.readouterr().err
    assert json.loads(storage.read_text(registry.registry_uri(root)))["samples"]["62"]["by"] == "operator"


def test_a_template_with_the_dev_images_is_refused(by_hand, sample_files):  # noqa: F811
    """Vertex AI cannot pull minikube's local tags: the trigger says so instead of submitting a run
    that fails at its first step."""
    from histoxai.pipelines.pipeline import compile_package

    settings, record = by_hand
    template = f"{settings.samples_uri}-templates/dev.yaml"
    compile_package(template)  # this process names no HISTOXAI_*_IMAGE: the dev defaults
    dev = retrain.Settings(**{**settings.__dict__, "template": template})
    upload_sample(sample_files, f"{settings.samples_uri}/71")
    with pytest.raises(retrain.InputError, match=r"dev.yaml: its steps run the local dev images"):
        retrain.retrain_sample(dev, "71", _ready(settings, "71"))
    assert not vertex_recorder.recorded(record)
