"""`histoxai report` builds the run report from step folders, as the pipeline's report step does."""

from __future__ import annotations

import json

from histoxai import artifacts
from histoxai.cli import main
from tests.app_data import synthesise_run


def _step_folders(root) -> dict:
    """The folders a finished run leaves: two ingested samples (one refused), the split, two models,
    and the multi-task model's explain output."""
    ingest = root / "ingest"
    (ingest / "3").mkdir(parents=True)
    (ingest / "3" / artifacts.INGEST_INFO).write_text(json.dumps(
        {"sample": "3", "voxels": 400, "kept": 120, "patch_size": 32, "sample_dir": "samples/3"}))
    (ingest / "9").mkdir()
    (ingest / "9" / artifacts.INGEST_REJECTED).write_text(json.dumps({"sample": "9", "reason": "no MR file"}))
    split = root / "split"
    split.mkdir()
    (split / artifacts.SPLIT_INFO).write_text(json.dumps(
        {"options": {"strategy": "random", "train_samples": ["3"], "fractions": [0.6, 0.2, 0.2], "seed": 0},
         "counts": {"3": {"train": 72, "val": 24, "test": 24}}}))
    models = {}
    for name, targets, r2 in (("mdfa", ["MD", "FA"], 0.61), ("cc", ["CC"], 0.37)):
        folder = root / "models" / name
        folder.mkdir(parents=True)
        (folder / artifacts.TRAIN_METRICS).write_text(json.dumps(
            {"targets": targets, "epochs": {"frozen": 2, "finetune": 3}, "device": "CPU",
             "r2": {s: {t: r2 for t in targets} for s in ("train", "val", "test")},
             "n": {"train": 72, "val": 24, "test": 24}}))
        (folder / artifacts.MODEL_CONFIG).write_text(f"backbone: tiny\ntargets: {targets}\n")
        models[name] = folder
    synthesise_run(root / "run", patches=4, patch_size=32, map_size=16, samples=1)
    return {"ingest": ingest, "split": split, "models": models, "maps": root / "run" / "explain"}


def test_report_is_built_from_the_step_folders(tmp_path, capsys):
    steps = _step_folders(tmp_path)
    out = tmp_path / "report"
    argv = ["report", "--ingested", str(steps["ingest"] / "3"), "--ingested", str(steps["ingest"] / "9"),
            "--split", str(steps["split"]), "--multitask-model", str(steps["models"]["mdfa"]),
            "--single-task-model", str(steps["models"]["cc"]), "--multitask-maps", str(steps["maps"]),
            "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.md", "summary.json"]
    assert "Patches: sample 3: 120" in printed and "sample 9, refused by ingestion: no MR file" in printed
    assert f"wrote {out}" in printed
    summary = json.loads((out / "summary.json").read_text())
    # the settings default to what the inputs say
    assert summary["parameters"]["samples"] == ["3", "9"]
    assert summary["parameters"]["training samples"] == ["3"]
    assert summary["parameters"]["multi-task targets"] == "MD,FA"
    assert summary["parameters"]["single-task targets"] == "CC"
    assert summary["config"].startswith("backbone: tiny")
    assert summary["training_r2_table"][2] == {"set": "test", "MD (multitask)": 0.61, "FA (multitask)": 0.61,
                                               "CC (single_task)": 0.37}
    page = (out / "report.html").read_text()
    assert "samples: [&#x27;3&#x27;, &#x27;9&#x27;]" in page or "samples: ['3', '9']" in page
    assert "sample 9: no MR file" in page and "<td>120</td>" in page
    assert "# histoxai run report" in (out / "report.md").read_text()

    # an existing OUT is kept unless --overwrite
    assert main(argv) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite", "--samples", "3", "--tuning"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["parameters"]["samples"] == ["3"] and summary["parameters"]["tuning"].startswith("on")


def test_a_missing_input_is_one_line_naming_its_option_and_writes_nothing(tmp_path, capsys):
    steps = _step_folders(tmp_path)
    out = tmp_path / "report"
    common = ["--ingested", str(steps["ingest"] / "3"), "--multitask-model", str(steps["models"]["mdfa"]),
              "--single-task-model", str(steps["models"]["cc"]), "--out", str(out)]
    assert main(["report", *common]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "--split: not given" in err
    assert main(["report", *common, "--split", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and f"--split {tmp_path / 'nowhere'}: no such folder" in err
    assert not out.exists()
