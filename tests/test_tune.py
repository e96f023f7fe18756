"""Tuning: pruning, results, resume, Vizier spec, KFP (the search space: tests/test_tune_space.py)."""

# No `from __future__ import annotations`: KFP reads the pipeline function's annotations as types.
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml

from histoxai import artifacts, storage
from histoxai import config as configs
from histoxai.cli import main
from histoxai.components.tune import results
from histoxai.components.tune.space import CONDITIONS, load_space, parse_space, restore_ints
from histoxai.components.tune.tune import STUDY_NAME, tune
from histoxai.config import with_values
from histoxai.errors import InputError
from histoxai.model import load_model
from histoxai.reuse import REUSED_FROM, training_fingerprint, why_not_reusable
from histoxai.training import STOPPED_EXIT_CODE, load_splits, resolve_runtime, train
from tests.train_data import QUICK_TUNE as QUICK
from tests.train_data import write_blob_manifest, write_yaml

pytestmark = pytest.mark.slow  # a long file: it starts first (tests/conftest.py)
REPO = Path(__file__).resolve().parents[1]
SCHEDULE_CHILDREN = [k for k, (_, when) in CONDITIONS.items() if when == ("warmup_cosine",)]


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    return write_blob_manifest(tmp_path_factory.mktemp("blobs"), n=200, size=32, seed=1)


def _journal_study(path: Path):
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    return optuna.load_study(study_name=STUDY_NAME, storage=JournalStorage(JournalFileBackend(str(path))))


def test_results_on_a_synthetic_study(tmp_path):
    space = parse_space({"search": {"optimizer": "table", "weight_decay": "table", "dense_units": [8, 16],
                                    "dropout": {"low": 0.0, "high": 0.5}}})
    start = configs.from_dict(QUICK)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0), direction="maximize")

    def objective(trial):
        values = space.sample(trial, start)
        score = 0.9 - values["dropout"] + (0.05 if values["dense_units"] == 16 else 0.0)
        trial.set_user_attr("val_MD_r2", score)
        return score

    study.optimize(objective, n_trials=12)
    summary = results.write_results(study, start, space, ["MD"], str(tmp_path), "DATA", seed=0,
                                    best_model_uri=str(tmp_path / "best_model"))
    frame = pd.read_parquet(tmp_path / "trials.parquet")
    assert len(frame) == 12 and summary["complete"] == 12 and summary["best_trial"] == study.best_trial.number
    assert frame.loc[frame["objective"].idxmax(), "number"] == study.best_trial.number
    assert set(frame["dense_units"]) == {8, 16}
    assert pd.read_csv(tmp_path / "trials.csv")["dense_units"].dtype.kind == "i"
    best = configs.load_config(str(tmp_path / "best_config.yaml"))
    assert best == configs.with_values(start, study.best_trial.params)
    text = (tmp_path / "summary.md").read_text()
    assert f"## Best trial: #{study.best_trial.number}" in text and "| dropout |" in text
    assert f"--out MODEL_DIR --reuse {tmp_path / 'best_model'}`" in text
    header = (tmp_path / "best_config.yaml").read_text()
    assert f"--out MODEL_DIR --reuse {tmp_path / 'best_model'}\n" in header
    importances = text.split("## Parameter importances")[1]
    rated = [line.split("|")[1].strip() for line in importances.splitlines() if line.startswith("| ")]
    assert rated[0] == "parameter" and rated[1] == "dropout"  # the objective follows dropout most
    assert sorted(rated[1:]) == sorted(space.names)

    results.write_results(study, start, space, ["MD"], str(tmp_path), "DATA", seed=0, best_model_uri=None)
    assert "--out MODEL_DIR`" in (tmp_path / "summary.md").read_text()  # no kept model: nothing to reuse
    assert "--reuse" not in (tmp_path / "best_config.yaml").read_text()

    few = optuna.create_study(direction="maximize")
    few.add_trials(study.trials[:9])
    assert results.importances(few) == (None, "not computed: 9 complete trials, at least 10 needed")


# ---- studies with training ----

def test_study_prunes_hopeless_trials_and_its_best_config_trains_to_the_same_r2(tmp_path, blobs, monkeypatch):
    from histoxai import dataset

    predicted_splits, predict = [], dataset.predict
    monkeypatch.setattr(dataset, "predict", lambda net, frame, **kwargs: predicted_splits.extend(
        frame["split"].unique()) or predict(net, frame, **kwargs))
    space = parse_space({"search": {"learning_rate": [1e-3, 3e-3, 1e-9, 1e3]}})
    out = tmp_path / "tune"
    summary = tune(configs.from_dict(QUICK), space, str(blobs), str(out), n_trials=4, startup_trials=2,
                   warmup_epochs=1, enqueue=[{"learning_rate": v} for v in (1e-3, 3e-3, 1e-9, 1e3)])
    assert predicted_splits == ["val", "val"]  # the two finished trials; no train or test patch predicted
    frame = pd.read_parquet(out / "trials.parquet")
    pd.testing.assert_frame_equal(frame, pd.read_csv(out / "trials.csv"), check_dtype=False)
    assert list(frame["learning_rate"]) == [1e-3, 3e-3, 1e-9, 1e3]
    assert list(frame["state"]) == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED"], frame.to_string()
    assert list(frame["epochs"]) == [3, 3, 1, 1]  # both pruned after their first epoch
    assert "behind the median" in frame.loc[2, "note"] and "diverged" in frame.loc[3, "note"]
    assert frame["objective"].isna().tolist() == [False, False, True, True]
    assert summary["best_trial"] == int(frame.loc[frame["objective"].idxmax(), "number"])
    assert summary["val_r2"]["MD"] == pytest.approx(summary["objective"]) and summary["objective"] > 0.2
    assert (out / artifacts.STUDY_JOURNAL).exists() and "## Best trial: #" in (out / "summary.md").read_text()

    best = configs.load_config(str(out / "best_config.yaml"))
    assert best.learning_rate == frame.loc[summary["best_trial"], "learning_rate"]
    retrained = train(best, str(blobs), str(tmp_path / "retrained"))
    assert retrained["r2"]["val"]["MD"] == pytest.approx(summary["objective"], abs=1e-6)

    # the best trial's model is kept; training its config again reuses it: the same model, scored alike
    assert summary["best_model"] == str(out / artifacts.BEST_MODEL)
    assert json.loads((out / artifacts.BEST_MODEL / artifacts.BEST_TRIAL).read_text())["trial"] == \
        summary["best_trial"]
    reused = train(best, str(blobs), str(tmp_path / "reused"), reuse=summary["best_model"])
    assert reused.pop(REUSED_FROM) == summary["best_model"]
    assert reused == retrained  # R² on every split, epochs, best epoch, fingerprint, code version
    weights = [load_model(str(tmp_path / d / artifacts.MODEL_FILE)).get_weights()
               for d in ("retrained", "reused")]
    assert all(np.array_equal(a, b) for a, b in zip(*weights, strict=True))  # deterministic on a CPU
    assert (tmp_path / "reused" / artifacts.TRAIN_HISTORY).read_text() == \
        (out / artifacts.BEST_MODEL / artifacts.TRAIN_HISTORY).read_text()
    assert sorted(p.name for p in (tmp_path / "reused").iterdir()) == \
        sorted(p.name for p in (tmp_path / "retrained").iterdir())

    # anything but this same training is trained again, and says why
    splits, runtime = load_splits(str(blobs), best.targets), resolve_runtime(best)
    fingerprint = training_fingerprint(splits, best.targets)
    kept = summary["best_model"]
    assert why_not_reusable(kept, best, fingerprint, runtime) is None
    other = with_values(best, {"dense_units": 4}, "test")
    assert "another config (dense_units differ)" in why_not_reusable(kept, other, fingerprint, runtime)
    fewer = {**splits, "train": splits["train"].iloc[1:]}
    assert "other training or validation patches" in why_not_reusable(
        summary["best_model"], best, training_fingerprint(fewer, best.targets), runtime)
    relabelled = {**splits, "val": splits["val"].assign(MD=splits["val"]["MD"] + 1)}
    assert training_fingerprint(relabelled, best.targets) != fingerprint
    moved_test = {**splits, "test": splits["test"].iloc[1:]}  # the test split is only scored
    assert training_fingerprint(moved_test, best.targets) == fingerprint
    float16 = dataclasses.replace(runtime, precision="mixed_float16")
    assert "precision float32" in why_not_reusable(summary["best_model"], best, fingerprint, float16)
    (out / artifacts.BEST_MODEL / artifacts.TRAIN_METRICS).unlink()  # as a kill mid-copy on gs:// leaves it
    assert "no metrics.json" in why_not_reusable(summary["best_model"], best, fingerprint, runtime)


def test_killed_study_resumes_on_gcs_with_its_finished_trials(tmp_path, gcs_bucket, blobs, capsys,
                                                              python_forked):
    out = storage.join(gcs_bucket, "tune")
    config = write_yaml(tmp_path, {**QUICK, "finetune_epochs": 1}, "quick.yaml")
    space_path = write_yaml(tmp_path, {"search": {"learning_rate": [1e-3, 3e-3], "dense_units": [8, 16]}})
    args = ["tune", "--config", config, "--search-space", space_path, "--data", str(blobs), "--out", out,
            "--tuning-trials", "2", "--startup-trials", "2"]
    killed = python_forked(["-m", "histoxai.cli", *args, "--stop-after-trials", "1"])
    assert killed.returncode == STOPPED_EXIT_CODE, killed.stderr[-3000:]
    assert not storage.exists(storage.join(out, "best_config.yaml"))
    local = tmp_path / "mirrored.journal"
    storage.download_file(storage.join(out, artifacts.STUDY_JOURNAL), local)
    study = _journal_study(local)
    [first] = study.trials
    assert first.state.name == "COMPLETE"
    # A process killed in the middle of a trial leaves it RUNNING in the study.
    distributions = {"learning_rate": optuna.distributions.CategoricalDistribution([1e-3, 3e-3]),
                     "dense_units": optuna.distributions.CategoricalDistribution([8, 16])}
    interrupted = study.ask(distributions)
    storage.upload_file(local, storage.join(out, artifacts.STUDY_JOURNAL))

    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "1 finished trials, retrying 1 interrupted" in printed
    with storage.local_copy(storage.join(out, "trials.parquet")) as path:
        frame = pd.read_parquet(path)
    assert list(frame["state"]) == ["COMPLETE", "FAIL", "COMPLETE"]
    assert frame.loc[0, "objective"] == first.value  # kept, not trained again
    best = frame.loc[frame["objective"].idxmax(), "number"]  # its model is kept in the bucket
    kept = json.loads(storage.read_text(storage.join(out, artifacts.BEST_MODEL, artifacts.BEST_TRIAL)))
    assert kept["trial"] == best and storage.exists(storage.join(out, artifacts.BEST_MODEL, "model.keras"))
    assert f"--reuse {storage.join(out, artifacts.BEST_MODEL)}" in printed

    # a --reuse folder that holds nothing is a mistyped path: one line, exit 2, no OUT
    assert main(["train", "--config", storage.join(out, "best_config.yaml"), "--data", str(blobs),
                 "--out", str(tmp_path / "typo"), "--reuse", storage.join(out, "best_modle")]) == 2
    error = capsys.readouterr().err.strip()
    assert "--reuse" in error and "best_modle: no files there" in error and "\n" not in error
    assert not (tmp_path / "typo").exists()

    # `histoxai train --reuse` publishes it from the bucket instead of training the best config again
    model_dir = storage.join(gcs_bucket, "mdfa")
    assert main(["train", "--config", storage.join(out, "best_config.yaml"), "--data", str(blobs),
                 "--out", model_dir, "--reuse", storage.join(out, artifacts.BEST_MODEL)]) == 0
    trained = capsys.readouterr().out
    assert "reusing the finished training" in trained and "epoch 1/" not in trained
    metrics = json.loads(storage.read_text(storage.join(model_dir, "metrics.json")))
    assert metrics[REUSED_FROM] == storage.join(out, artifacts.BEST_MODEL)
    assert metrics["r2"]["val"]["MD"] == pytest.approx(frame.loc[best, "objective"], abs=1e-6)
    assert metrics["r2"]["test"]["MD"] is not None  # the trial scored validation only; now every split
    assert printed.count("device: ") == 1  # one training: the retry
    retry = frame.loc[2]
    assert retry["note"] == "retry of trial 1"
    assert (retry["learning_rate"], retry["dense_units"]) == (interrupted.params["learning_rate"],
                                                              interrupted.params["dense_units"])
    assert "interrupted" in frame.loc[1, "note"]


# ---- Vertex AI Vizier and KFP ----

def test_vizier_job_builds_offline_with_conditional_specs(tmp_path, gcs_bucket):
    from google.auth.credentials import AnonymousCredentials

    from histoxai.components.tune.vizier import build_tuning_job

    base = configs.load_config("thesis", {"targets": ["MD", "FA"]})
    space = load_space("search_space")
    job = build_tuning_job(base, space, "gs://b/split", "gs://b/vizier", project="p", location="us-central1",
                           credentials=AnonymousCredentials(), max_trial_count=30, objective_targets=["MD"])
    spec = type(job._gca_resource).to_dict(job._gca_resource, use_integers_for_enums=False)
    params = {p["parameter_id"]: p for p in spec["study_spec"]["parameters"]}
    assert set(params) == set(space.names) - set(CONDITIONS)
    assert params["batch_size"]["discrete_value_spec"]["values"] == [4, 8, 16, 24, 32]
    assert len(params["backbone"]["categorical_value_spec"]["values"]) == 8
    [decay] = params["optimizer"]["conditional_parameter_specs"]
    assert decay["parameter_spec"]["parameter_id"] == "weight_decay"
    assert decay["parent_categorical_values"]["values"] == ["adamw"]
    nested = {c["parameter_spec"]["parameter_id"]: c["parent_categorical_values"]["values"]
              for c in params["lr_schedule"]["conditional_parameter_specs"]}
    assert nested == {"learning_rate": ["none"], **{k: ["warmup_cosine"] for k in SCHEDULE_CHILDREN}}
    assert spec["study_spec"]["metrics"][0] == {"metric_id": "val_r2_mean", "goal": "MAXIMIZE"}
    worker = spec["trial_job_spec"]["worker_pool_specs"][0]
    assert worker["machine_spec"]["accelerator_type"] == "NVIDIA_TESLA_T4"
    sent = json.loads(worker["container_spec"]["args"][1])
    assert configs.from_dict(sent) == space.start_config(base)
    assert spec["max_trial_count"] == 30

    out = storage.join(gcs_bucket, "vizier")
    config = write_yaml(tmp_path, QUICK, "quick.yaml")
    assert main(["tune", "--backend", "vizier", "--project", "p", "--config", config, "--data", "gs://b/split",
                 "--search-space", "search_space_demo", "--out", out,
                 "--tuning-trials", "4"]) == 0
    written = json.loads(storage.read_text(storage.join(out, "vizier_job.json")))
    assert written["maxTrialCount"] == 4 and written["trialJobSpec"]["baseOutputDirectory"] == {
        "outputUriPrefix": out}


def test_vizier_trial_trains_with_the_values_vertex_passes(tmp_path, blobs, monkeypatch):
    from histoxai.components.tune.vizier import METRIC, run_trial

    metric_file = tmp_path / "hypertune" / "output.metrics"
    monkeypatch.setenv("CLOUD_ML_HP_METRIC_FILE", str(metric_file))
    monkeypatch.setenv("AIP_MODEL_DIR", str(tmp_path / "trial"))
    base = {**QUICK, "finetune_epochs": 1}
    vertex_args = ["--batch_size=16.0", "--optimizer=adamw", "--weight_decay=0.004", "--augment_flip=true"]
    metrics = run_trial(["--config-json", json.dumps(base), "--data", str(blobs), "--objective-targets", "MD",
                         *vertex_args])
    config = configs.load_config(str(tmp_path / "trial" / "config.yaml"))
    assert (config.batch_size, config.optimizer, config.weight_decay, config.augment_flip) == (
        16, "adamw", 0.004, True)
    [line] = metric_file.read_text().splitlines()
    assert float(json.loads(line)[METRIC]) == pytest.approx(metrics["r2"]["val"]["MD"])
    assert set(metrics["r2"]["test"].values()) == {None}  # a trial predicts no test patch
    with pytest.raises(InputError, match="--batch_size=8.5: expected a int"):
        run_trial(["--config-json", json.dumps(base), "--data", str(blobs), "--objective-targets", "MD",
                   "--batch_size=8.5"])
    # A trial's folder is a whole training: the best trial's is published with its own config, not
    # trained again, and scored on every split (the trial scored only validation).
    trial = tmp_path / "trial"
    assert main(["train", "--config", str(trial / "config.yaml"), "--data", str(blobs), "--reuse", str(trial),
                 "--out", str(tmp_path / "best")]) == 0
    published = json.loads((tmp_path / "best" / "metrics.json").read_text())
    assert published["reused_from"] == str(trial)
    assert published["r2"]["val"] == metrics["r2"]["val"] and None not in published["r2"]["test"].values()


def _tune_only_pipeline(base: dict, space: dict, n_trials: int):
    from kfp import dsl

    from histoxai.components.tune.component import tune_step

    @dsl.pipeline(name="tune-only")
    def tune_only(split_uri: str = "gs://b/split"):
        split = dsl.importer(artifact_uri=split_uri, artifact_class=dsl.Dataset, reimport=False)
        tune_step(split=split.output, base_config=base, search_space=space, targets="MD",
                  objective_targets="", tuning_trials=n_trials, timeout_s=0.0, startup_trials=5,
                  warmup_epochs=3)

    return tune_only


def test_component_compiles_in_a_one_step_pipeline(tmp_path):
    from kfp import compiler

    from histoxai.config import as_pipeline_parameter
    from histoxai.images import GPU_IMAGE

    base = as_pipeline_parameter(configs.from_dict(QUICK).to_dict())
    path = tmp_path / "pipeline.yaml"
    compiler.Compiler().compile(_tune_only_pipeline(base, {"search": {"dropout": [0.0, 0.1]}}, 4), str(path))
    compiled = yaml.safe_load(path.read_text())
    executor = compiled["deploymentSpec"]["executors"]["exec-tune-step"]["container"]
    assert executor["image"] == GPU_IMAGE
    outputs = compiled["components"]["comp-tune-step"]["outputDefinitions"]["artifacts"]
    assert {k: v["artifactType"]["schemaTitle"] for k, v in outputs.items()} == {
        "study": "system.Artifact", "best_config": "system.Artifact", "best_model": "system.Model",
        "summary": "system.Markdown", "metrics": "system.Metrics"}
    constant = compiled["root"]["dag"]["tasks"]["tune-step"]["inputs"]["parameters"]["base_config"]
    assert constant["runtimeValue"]["constant"]["batch_size"] == 8.0  # a JSON number: why restore_ints exists
    assert configs.from_dict(restore_ints(constant["runtimeValue"]["constant"])) == configs.from_dict(QUICK)


def test_component_runs_locally_with_the_values_kfp_passes(tmp_path, blobs, shared_task_server):
    from kfp import local

    from histoxai.config import as_pipeline_parameter
    from histoxai.pipelines.task_fork import forked_tasks

    # KFP turns the dict parameters' integers into floats; the component must read them back.
    base = as_pipeline_parameter(configs.from_dict({**QUICK, "finetune_epochs": 1}).to_dict())
    space = {"fixed": {"patience": 4}, "search": {"dense_units": [8, 16]}}
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    with forked_tasks(shared_task_server):
        _tune_only_pipeline(base, space, 1)(split_uri=str(blobs.parent))
    [step] = (tmp_path / "root").glob("tune-only-*/tune-step")
    best = configs.load_config(str(step / "best_config"))
    assert (best.targets, best.patience, best.finetune_epochs) == (("MD",), 4, 1)
    assert best.dense_units in (8, 16)
    assert "## Best trial: #0" in (step / "summary").read_text()
    executor_output = json.loads((step / "executor_output.json").read_text())
    metrics = executor_output["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    frame = pd.read_parquet(step / "study" / "trials.parquet")
    assert metrics["best_objective"] == pytest.approx(frame.loc[0, "objective"]) and metrics["trials"] == 1
    assert json.loads((step / "best_model" / artifacts.BEST_TRIAL).read_text())["trial"] == 0
    assert configs.load_config(str(step / "best_model" / "config.yaml")).dense_units == best.dense_units


def test_a_study_killed_in_a_trial_leaves_a_scratch_folder_the_next_run_removes(tmp_path, blobs, capsys,
                                                                                monkeypatch, python_forked):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    out = tmp_path / "tune"
    config = write_yaml(tmp_path, {**QUICK, "finetune_epochs": 1}, "quick.yaml")
    args = ["tune", "--config", config, "--search-space", write_yaml(tmp_path, {"search": {
        "learning_rate": [1e-3, 3e-3]}}), "--data", str(blobs), "--out", str(out), "--tuning-trials", "1"]
    code = ("import os, signal\nfrom histoxai import training\n"
            "training.publish_results = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
            f"from histoxai.cli import main\nmain({args!r})\n")
    killed = python_forked(["-c", code], env={**os.environ, "TMPDIR": str(scratch)}, cwd=REPO)
    assert killed.returncode == -9, killed.stderr[-3000:]
    left = sorted(p.name for p in scratch.iterdir())
    assert any(name.startswith("histoxai-trial0-") for name in left), left

    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    assert main(args) == 0
    assert "retrying 1 interrupted" in capsys.readouterr().out
    assert not list(scratch.glob("histoxai-*"))  # TensorFlow's autograph files may stay
