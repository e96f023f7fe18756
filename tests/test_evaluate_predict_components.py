"""The evaluate and predict steps as KFP components (compiled specs, images) and the headline metric names."""

from __future__ import annotations

import pandas as pd
import yaml

from histoxai.components.evaluate import evaluate as ev


def test_headline_metrics_are_flat_names():
    table = pd.DataFrame({"model": ["m", "m", "m"], "target": ["CC"] * 3,
                          "kind": ["sample", "sample", "split"], "group": ["3", "8", "test"],
                          "r2": pd.array([0.5, pd.NA, 0.9], dtype="Float64")})
    assert ev.headline_metrics(table) == {"r2_m_CC_sample_3": 0.5, "r2_m_CC_test": 0.9}


def test_kfp_component_compiles(tmp_path):
    from kfp import compiler

    from histoxai.components.evaluate.component import evaluate_models
    from histoxai.images import CPU_IMAGE

    path = tmp_path / "evaluate.yaml"
    compiler.Compiler().compile(evaluate_models, str(path))
    spec = yaml.safe_load(path.read_text())
    inputs = spec["root"]["inputDefinitions"]["artifacts"]
    outputs = spec["root"]["outputDefinitions"]["artifacts"]
    assert inputs["split"]["artifactType"]["schemaTitle"] == "system.Dataset"
    assert inputs["single_task_model"].get("isOptional") is True
    assert {k: v["artifactType"]["schemaTitle"] for k, v in outputs.items()} == {
        "evaluation": "system.Dataset", "metrics": "system.Metrics", "report_html": "system.HTML",
        "report_markdown": "system.Markdown"}
    executor = next(iter(spec["deploymentSpec"]["executors"].values()))
    assert executor["container"]["image"] == CPU_IMAGE


def test_predict_component_runs_on_the_gpu_image(tmp_path):
    from kfp import compiler

    from histoxai.components.predict.component import predict_model
    from histoxai.images import GPU_IMAGE

    path = tmp_path / "predict.yaml"
    compiler.Compiler().compile(predict_model, str(path))
    spec = yaml.safe_load(path.read_text())
    inputs = spec["root"]["inputDefinitions"]
    assert {k: v["artifactType"]["schemaTitle"] for k, v in inputs["artifacts"].items()} == {
        "model": "system.Model", "data": "system.Dataset"}
    assert set(inputs["parameters"]) == {"name", "batch_size"}
    assert spec["root"]["outputDefinitions"]["artifacts"]["predictions"]["artifactType"][
        "schemaTitle"] == "system.Dataset"
    executor = next(iter(spec["deploymentSpec"]["executors"].values()))
    assert executor["container"]["image"] == GPU_IMAGE
