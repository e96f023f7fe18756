"""The pipeline's tuning-on branch (dsl.If -> tune -> dsl.OneOf -> train) run whole under kfp.local: both
trainings get the study's best config, not the one the run was given."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
# the search space of one trial: every value differs from the given config, so a training that got the
# given config (the tuning-off branch, or the tuned branch ignored) cannot pass for a tuned one
SPACE = {"fixed": {"frozen_epochs": 1, "finetune_epochs": 0, "feature_units": 8, "dropout": 0.0},
         "search": {"dense_units": [8, 16]}}
GIVEN = ["image_size=32", "frozen_epochs=1", "finetune_epochs=1", "batch_size=32", "dense_units=64",
         "feature_units=32", "dropout=0.1"]


def _executor_output(run_dir: Path, task: str) -> dict:
    return json.loads((run_dir / task / "executor_output.json").read_text())["artifacts"]


@pytest.mark.slow
def test_local_run_with_tuning_trains_the_studys_best_config(tmp_path):
    """Two phantom samples of 16 x 16 voxels, one trial, one epoch, no explain or baseline work to speak
    of: 70-120 s on two shared cores, most of it the 16 tasks' TensorFlow start-ups (no smaller run of the
    real DAG reaches the trainings: predict, evaluate, explain and report follow them in every run)."""
    from histoxai.config import config_from_yaml, load_config, parse_overrides
    from histoxai.phantom import render_phantom
    from histoxai.pipelines.local_run import run_local

    samples = str(tmp_path / "samples")
    render_phantom(samples, [3, 4], pixels_per_voxel=16, n_max=8, crop=(16, 16), seed=1)
    arguments = {
        "samples_uri": samples, "samples": ["3", "4"], "patch_size": 32, "erosion": 1,
        "config": (REPO / "histoxai" / "configs" / "demo.yaml").read_text(), "config_overrides": GIVEN,
        "tuning": True, "tuning_trials": 1, "tuning_startup_trials": 1, "tuning_search_space": SPACE,
        "evaluate_baseline_summary": "", "explain_methods": ["vanilla"], "explain_max_patches": 2,
        "explain_trust_patches": 0,
    }
    run = run_local(arguments, str(tmp_path / "runs"))
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
    # the check, then the tuned branch's resolve; the tuning-off branch's never ran
    assert (run_dir / "resolve-config-2").is_dir() and not (run_dir / "resolve-config-3").exists()
    assert run.summary["parameters"]["tuning"].startswith("on")
    assert "dense_units: 64" not in run.summary["config"]
