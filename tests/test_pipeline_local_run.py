"""Two local runs of the whole DAG under kfp.local, shared by the tests below. The first: samples read from
the GCS emulator (one of them truncated, as an interrupted upload leaves it), the tuning-on branch
(dsl.If -> tune -> dsl.OneOf -> train), both models registered as version 1 in a folder registry, then
the run published to the bucket. The second, with the tuning-off branch on local samples with a held-out
one, scores version 1 beside its own models and registers version 2, promoted only by the rule. Runs are
shared because each costs a minute or more of two cores, most of it its tasks' TensorFlow start-ups."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from histoxai import layout, storage
from histoxai.cli import main as histoxai_main
from histoxai.errors import InputError
from histoxai.model_registry import SAVED_MODEL_DIR, open_registry

REPO = Path(__file__).resolve().parents[1]
# the search space of one trial: every value differs from the given config, so a training that got the
# given config (the tuning-off branch, or the tuned branch ignored) cannot pass for a tuned one
SPACE = {"fixed": {"frozen_epochs": 1, "finetune_epochs": 0, "feature_units": 8, "dropout": 0.0},
         "search": {"dense_units": [8, 16]}}
GIVEN = ["image_size=32", "frozen_epochs=1", "finetune_epochs=1", "batch_size=32", "dense_units=64",
         "feature_units=32", "dropout=0.1"]


@pytest.fixture(scope="module")
def bucket_run(gcs_module_bucket, shared_task_server, tmp_path_factory):
    """Phantom samples 3 and 4 (a 20 x 20 voxel crop) in a fresh emulator bucket, and 5: sample 4 with
    its slide cut short, which ingestion refuses while the run goes on; one tuning trial of one epoch;
    both models registered in a fresh folder registry."""
    from histoxai.phantom import render_phantom
    from histoxai.pipelines.local_run import run_local

    bucket = gcs_module_bucket
    samples = storage.join(bucket, "samples")
    render_phantom(samples, [3, 4], pixels_per_voxel=16, n_max=8, crop=(20, 20), seed=1)
    for uri in storage.list_files(f"{samples}/4"):
        data = storage.read_bytes(uri)
        storage.write_bytes(uri.replace(f"{samples}/4/", f"{samples}/5/"),
                            data[: len(data) * 6 // 10] if uri.endswith(layout.HE_MAT) else data)
    arguments = {
        "samples_uri": samples, "samples": ["3", "4", "5"], "patch_size": 32, "erosion": 2,
        "config": (REPO / "histoxai" / "configs" / "demo.yaml").read_text(), "config_overrides": GIVEN,
        "tuning": True, "tuning_trials": 1, "tuning_startup_trials": 1, "tuning_search_space": SPACE,
        "evaluate_baseline_summary": "", "explain_methods": ["vanilla"], "explain_max_patches": 4,
        "explain_trust_patches": 2, "explain_phantom_dir": samples,
        "model_registry": str(tmp_path_factory.mktemp("registry")),
    }
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        run = run_local(arguments, str(tmp_path_factory.mktemp("bucket-run") / "runs"),
                        task_server=shared_task_server)
    return SimpleNamespace(run=run, bucket=bucket, samples=samples, arguments=arguments,
                           out=out.getvalue(), err=err.getvalue())


def _executor_output(run_dir: Path, task: str) -> dict:
    return json.loads((run_dir / task / "executor_output.json").read_text())["artifacts"]


@pytest.mark.slow
def test_local_run_reads_samples_from_the_bucket(bucket_run):
    from histoxai.pipelines.local_run import publish_run

    run, samples, gcs_bucket = bucket_run.run, bucket_run.samples, bucket_run.bucket
    assert bucket_run.out.count("  done ") == 21 and "for-loop-1-iteration-1/ingest" in bucket_run.out
    assert "pipeline: 100%" in bucket_run.err  # the progress bar
    # every executed task timed, the three ingest iterations among them, in order of start (a task
    # starts after those it needs; the report needs nothing of the registrations, which may start later)
    tasks = [step.task for step in run.steps]
    assert len(tasks) == 21 and tasks.count("ingest") == 3
    assert tasks.index("tune-step") < tasks.index("train-model")
    assert tasks.index("report") > max(tasks.index("explain-model"), tasks.index("explain-model-2"))
    assert all(step.seconds > 0 for step in run.steps) and "tune-step " in run.step_times()
    assert [step.started for step in run.steps] == sorted(step.started for step in run.steps)

    summary = run.summary
    assert [(s["sample"], s["source"]) for s in summary["samples"]] == [
        ("3", f"{samples}/3"), ("4", f"{samples}/4")]
    assert all(s["patches"] > 50 for s in summary["samples"])
    (refused,) = summary["rejected"]
    assert refused["sample"] == "5" and "truncated file" in refused["reason"], refused
    assert "Samples left out: ingestion refused them" in run.report_html.read_text()
    rows = [r["data"] for r in summary["r2_table"]]
    assert rows == ["sample 3 *", "sample 4 *", "train set", "validation set", "test set"]
    assert set(summary["r2_table"][0]) == {"data", "MD (multitask)", "FA (multitask)", "CC (single_task)"}
    trust = {(r["model"], r["target"]) for r in summary["trust_table"]}
    assert trust == {("multitask", "MD"), ("multitask", "FA"), ("single_task", "CC")}
    assert summary["parameters"]["tuning"].startswith("on") and "image_size: 32" in summary["config"]
    page = run.report_html.read_text()
    assert page.startswith("<!DOCTYPE html>") and "sample 4 *" in page and "Can the saliency maps" in page

    outputs = _executor_output(run.run_dir, "train-model")
    model = outputs["model"]["artifacts"][0]["metadata"]
    assert model["targets"] == ["MD", "FA"] and model["backbone"] == "tiny"
    assert model["training_samples"] == ["3", "4"] and model["framework"].startswith("tensorflow")
    assert re.fullmatch(r"[0-9a-f]{16}", model["config_hash"]) and model["code_version"].startswith("0.1.0")
    metrics = outputs["metrics"]["artifacts"][0]["metadata"]
    assert {"r2_test_MD", "r2_test_FA", "n_train"} <= set(metrics)
    assert (run.run_dir / "train-model" / "model" / "model.keras").is_file()
    import pandas as pd

    # evaluate predicted nothing itself: every patch came from the predict steps' stamped files
    evaluated = _executor_output(run.run_dir, "evaluate-models")["evaluation"]["artifacts"][0]["metadata"]
    assert evaluated["predicted_here"] == 0
    assert evaluated["predicted_here_by_model"] == {"multitask": 0, "single_task": 0}
    predicted = _executor_output(run.run_dir, "predict-model")["predictions"]["artifacts"][0]["metadata"]
    assert predicted["model"] == "multitask" and predicted["samples"] == ["3", "4"]
    assert predicted["n"] == len(pd.read_parquet(run.run_dir / "split" / "data" / "split.parquet"))
    ingest = run.run_dir / "for-loop-1-iteration-0" / "ingest"
    assert (ingest / "data" / "manifest.parquet").is_file() and (ingest / "qc").read_text().startswith("# ")

    published = publish_run(run, storage.join(gcs_bucket, "runs"))
    files = storage.list_files(published)
    assert f"{published}/report.html" in files and f"{published}/run.log" in files
    assert f"{published}/train-model/model/model.keras" in files
    # the published tables locate the published shards and maps, not this machine's copies
    for name in ("split/data/split.parquet",):
        local = pd.read_parquet(run.run_dir / name)
        with storage.local_copy(f"{published}/{name}") as copy:
            remote = pd.read_parquet(copy)
        assert remote["shard_uri"].tolist() == [
            uri.replace(f"{run.run_dir}/", f"{published}/") for uri in local["shard_uri"]]
        assert all(uri.startswith(f"{published}/for-loop-1-iteration-") for uri in remote["shard_uri"])
    tables = [f for f in files if f.endswith(".parquet")]
    for table in tables:
        with storage.local_copy(table) as copy:
            frame = pd.read_parquet(copy)
        text = frame.select_dtypes(include=["object", "string"]).astype(str)
        assert not text.apply(lambda c: c.str.contains(str(run.run_dir.parent.parent))).any().any(), table
    with pytest.raises(InputError, match="already exists"):
        publish_run(run, storage.join(gcs_bucket, "runs"))


@pytest.mark.slow
def test_local_run_with_tuning_trains_the_studys_best_config(bucket_run):
    """Both trainings get the study's best config, not the one the run was given."""
    from histoxai.config import config_from_yaml, load_config, parse_overrides

    run, arguments = bucket_run.run, bucket_run.arguments
    run_dir = run.run_dir

    # the study ran and chose a config
    tuned = _executor_output(run_dir, "tune-step")
    study = tuned["study"]["artifacts"][0]["metadata"]
    assert (study["trials"], study["complete"]) == (1, 1)
    best_file = Path(tuned["best_config"]["artifacts"][0]["uri"])
    best = load_config(str(best_file))
    chosen_units = int(tuned["best_config"]["artifacts"][0]["metadata"]["params"]["dense_units"])
    assert best.dense_units == chosen_units in (8, 16)
    given = config_from_yaml(arguments["config"], parse_overrides(GIVEN))
    assert given.dense_units == 64 and given.finetune_epochs == 1

    # both trainings trained that config: its values, its epochs, its hash in the model's lineage
    for task, targets in (("train-model", "MD,FA"), ("train-model-2", "CC")):
        model_dir = run_dir / task / "model"
        trained = yaml.safe_load((model_dir / "config.yaml").read_text())
        expected = yaml.safe_load(best_file.read_text())
        assert {k: v for k, v in trained.items() if k != "targets"} == \
            {k: v for k, v in expected.items() if k != "targets"}, task
        assert trained["dense_units"] == chosen_units and trained["feature_units"] == 8
        model = _executor_output(run_dir, task)["model"]["artifacts"][0]["metadata"]
        assert model["epochs"] == {"frozen": 1, "finetune": 0}, task  # the given config fine-tunes 1 epoch
        resolved = config_from_yaml(best_file.read_text(), {"targets": targets})
        assert model["config_hash"] == hashlib.sha256(resolved.to_yaml().encode()).hexdigest()[:16], task
    # the multi-task model is the study's best trial (same config, targets and patches): reused, byte for
    # byte, not trained again; the single-task model (CC, which no trial trained) was trained
    best_model = Path(tuned["best_model"]["artifacts"][0]["uri"])
    lineage = {task: _executor_output(run_dir, task)["model"]["artifacts"][0]["metadata"]
               for task in ("train-model", "train-model-2")}
    assert lineage["train-model"]["reused_from"] == str(best_model)
    assert (run_dir / "train-model" / "model" / "model.keras").read_bytes() == \
        (best_model / "model.keras").read_bytes()
    assert lineage["train-model-2"]["reused_from"] == ""
    # the check, then the tuned branch's resolve; the tuning-off branch's never ran
    assert (run_dir / "resolve-config-2").is_dir() and not (run_dir / "resolve-config-3").exists()
    assert run.summary["parameters"]["tuning"].startswith("on")
    assert "dense_units: 64" not in run.summary["config"]


@pytest.mark.slow
def test_a_second_run_registers_and_gates_beside_the_first_runs_champions(bucket_run, shared_task_server,
                                                                          tmp_path, capsys):
    """The first run registered version 1 of both models and promoted them; a second run scores version
    1 beside its own models in the same evaluate step, registers version 2, and moves the champion only
    by the rule."""
    import pandas as pd

    from histoxai.phantom import render_phantom
    from histoxai.pipelines.local_run import run_local

    first, registry = bucket_run.run, bucket_run.arguments["model_registry"]
    assert "done register-model" in bucket_run.out and "done register-model-2" in bucket_run.out
    samples = str(tmp_path / "samples")
    render_phantom(samples, [3, 4, 5], pixels_per_voxel=16, n_max=8, crop=(14, 14), seed=1)
    # the first run's parameters (config, sizes, registry), on local samples, with the given config
    arguments = {**bucket_run.arguments, "samples_uri": samples, "explain_phantom_dir": samples,
                 "tuning": False, "promotion_margin": 0.0, "promotion_tolerance": 0.0}
    second = run_local(arguments, str(tmp_path / "runs"), task_server=shared_task_server)
    # the first run's server, still open, served this run too: every task forked from it
    assert all(step.cpu_seconds is not None for step in second.steps), second.steps

    target = open_registry(registry)
    assert target.names() == ["histoxai-multitask", "histoxai-single-task"]
    tasks = (("histoxai-multitask", "register-model"), ("histoxai-single-task", "register-model-2"))
    for name, task in tasks:
        one, two = target.versions(name)
        assert one.record["verdict"] == "promoted" and one.record["run"] == first.run_dir.name
        assert two.record["run"] == second.run_dir.name and two.record["champion_before"] == 1
        assert one.labels["training-samples"] == "3-4" and len(one.labels["config-hash"]) == 16
        outputs = _executor_output(second.run_dir, task)
        promoted = outputs["metrics"]["artifacts"][0]["metadata"]["promoted"] == 1.0
        assert (two.record["verdict"] == "promoted") == promoted == two.champion == (not one.champion)
        # the rule's verdict from the scores the evaluate step wrote
        scores = two.record["scores"]
        assert promoted == (scores["challenger"] >= scores["champion"]
                            and all(t["challenger"] >= t["champion"] for t in scores["per_target"].values()))
        model = outputs["vertex_model"]["artifacts"][0]
        assert model["metadata"]["resourceName"] == two.resource_name
        page = (second.run_dir / task / "comparison").read_text()
        assert page.startswith(f"## {name}: challenger version 2")
        assert (Path(two.uri) / SAVED_MODEL_DIR / "saved_model.pb").is_file()
    evaluation = second.run_dir / "evaluate-models" / "evaluation"
    comparison = json.loads((evaluation / "comparison.json").read_text())
    assert set(comparison) == {"multitask", "single_task"}
    assert comparison["multitask"]["basis"] == "held-out samples"
    assert comparison["multitask"]["groups"] == ["5"] and comparison["multitask"]["champion"]["version"] == 1
    table = pd.read_parquet(evaluation / "evaluation.parquet")
    assert {"multitask", "multitask_champion", "single_task", "single_task_champion"} == set(table["model"])
    # the champions, too, were predicted by the predict steps: evaluate loaded no model
    evaluated = _executor_output(second.run_dir, "evaluate-models")["evaluation"]["artifacts"][0]["metadata"]
    assert evaluated["predicted_here_by_model"] == {
        "multitask": 0, "multitask_champion": 0, "single_task": 0, "single_task_champion": 0}
    # the tuning-off branch: the given config's resolve ran, the tuned branch's did not
    assert (second.run_dir / "resolve-config-3").is_dir() and not (second.run_dir / "tune-step").exists()

    capsys.readouterr()
    assert histoxai_main(["models", "list", "--registry", registry]) == 0
    listing = capsys.readouterr().out
    assert "histoxai-multitask" in listing and "[champion]" in listing
    assert histoxai_main(["models", "promote", "histoxai-multitask@2", "--registry", registry,
                          "--reason", "reviewed"]) == 0
    assert target.champion("histoxai-multitask").version == 2
    assert histoxai_main(["models", "rollback", "histoxai-multitask", "--registry", registry]) == 0
    assert target.champion("histoxai-multitask").version == 1
    assert histoxai_main(["models", "show", "histoxai-multitask", "--registry", registry]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 2)[-1])["version"] == 1
