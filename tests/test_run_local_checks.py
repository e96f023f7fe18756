"""`histoxai run-local`'s checks before a run starts (samples on disk and in a bucket, the pipeline
root), a failing task named in its one error line, and its progress while steps stage their outputs."""

from __future__ import annotations

import re
import shutil
import threading
import time
from pathlib import Path

from histoxai import storage
from histoxai.cli import main as histoxai_main


def _sample_folders(root: Path, *ids: str) -> None:
    """Sample folders that hold only an empty MR.mat at the layout's path."""
    from histoxai.layout import MR_MAT

    for sample in ids:
        (root / sample / MR_MAT).parent.mkdir(parents=True)
        (root / sample / MR_MAT).touch()


def test_run_local_checks_every_sample_before_it_starts(tmp_path, capsys):
    samples, runs = tmp_path / "samples", tmp_path / "runs"
    _sample_folders(samples, "3", "4", "5")
    (samples / "6").mkdir()  # a folder without MR.mat is no sample
    for argv, message in [
        (["--samples", "3,7"], f"--samples: sample 7 not found under {samples} (expected "
                               f"{samples}/7/coreg_fine/ver1/MR.mat); found samples 3, 4, 5"),
        (["--samples", "3,6,4,12"], f"--samples: samples 6, 12 not found under {samples} (expected "
                                    f"{samples}/<id>/coreg_fine/ver1/MR.mat); found samples 3, 4, 5"),
        ([], f"--samples: samples 1, 2, {', '.join(str(n) for n in range(6, 17))} not found under {samples}"),
        (["--samples", "3,4,5", "--train-samples", "3,9"],
         "--train-samples: 9 not among --samples 3, 4, 5; expected a subset of the samples to ingest"),
        (["--samples", "5"], "--train-samples: 3, 4 not among --samples 5"),  # the default 3, 4
        (["--samples", "3,../../etc"], "--samples: sample id '../../etc' is not a usable sample id"),
    ]:
        code = histoxai_main(["run-local", "--samples-uri", str(samples), "--out", str(runs), *argv])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        assert err.startswith(f"histoxai run-local: error: {message}"), err
        assert not runs.exists()  # no run folder, no log
    empty = tmp_path / "nothing"
    code = histoxai_main(["run-local", "--samples-uri", str(empty), "--samples", "3", "--out", str(runs)])
    assert code == 2
    assert capsys.readouterr().err.strip().endswith(
        f"(expected {empty}/3/coreg_fine/ver1/MR.mat); found no sample folder there")
    assert not runs.exists()


def test_run_local_checks_samples_in_a_bucket(gcs_bucket, tmp_path, capsys):
    from histoxai.layout import MR_MAT

    samples = storage.join(gcs_bucket, "samples")
    for sample in ("3", "4"):
        storage.write_bytes(storage.join(samples, sample, MR_MAT), b"")
    storage.write_bytes(storage.join(samples, "5", "notes.txt"), b"no MR.mat here")
    code = histoxai_main(["run-local", "--samples-uri", samples, "--samples", "3,4,5",
                          "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == (f"histoxai run-local: error: --samples: sample 5 not found under {samples} "
                                 f"(expected {samples}/5/coreg_fine/ver1/MR.mat); found samples 3, 4")
    assert not (tmp_path / "runs").exists()


def test_run_local_refuses_a_gs_pipeline_root(capsys):
    code = histoxai_main(["run-local", "--samples-uri", "x", "--out", "gs://bucket/runs"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "a local run needs a local folder" in err and "--publish" in err


def test_local_run_names_the_failing_task(tmp_path, capsys):
    samples = tmp_path / "samples"
    _sample_folders(samples, "3")  # passes the check before the run; ingest finds MR.mat empty
    code = histoxai_main(["run-local", "--samples-uri", str(samples), "--samples", "3",
                          "--train-samples", "3", "--config", "demo", "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    # ingest refuses the only (training) sample without failing; split then has nothing to train on
    assert re.fullmatch(r"histoxai run-local: error: pipeline task split failed: InputError: "
                        r"train_samples 3: "
                        rf"every training sample was refused by ingestion \(3: {samples}/3/"
                        r"coreg_fine/ver1/MR.mat: .*\(full log: .*\.log\)", err), err


def test_progress_survives_steps_that_rename_their_staging_folders(tmp_path):
    """Steps build outputs in a staging folder and rename it; the progress poll walks the run folder
    meanwhile, and a folder gone mid-walk must not end the progress thread (it did, with
    FileNotFoundError, about 1,400 times in 3 s of this churn before the fix)."""
    from histoxai.pipelines.local_run import _Progress

    task = tmp_path / "run" / "task"
    task.mkdir(parents=True)
    (task / "executor_output.json").write_text("{}")
    finished = []

    class Bar:
        def update(self, n):
            finished.append(n)

        def write(self, *args, **kwargs):
            pass

    stop = threading.Event()

    def churn():
        for i in range(10**9):
            if stop.is_set():
                return
            (task / f"stage{i % 4}" / "a" / "b").mkdir(parents=True, exist_ok=True)
            shutil.rmtree(task / f"stage{i % 4}")

    churner = threading.Thread(target=churn)
    churner.start()
    progress = _Progress(tmp_path, Bar(), None)
    progress.started = 0.0
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            progress.poll()
    finally:
        stop.set()
        churner.join()
    assert finished == [1]  # the one finished task, counted once


def test_the_demo_refuses_a_bucket_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from histoxai.pipelines import demo

    monkeypatch.chdir(tmp_path)  # a gs:// URI taken for a path would become ./gs:/bucket/demo here
    assert demo.main(["--out", "gs://bucket/demo"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "gs://bucket/demo" in err and "local folder" in err
    assert list(tmp_path.iterdir()) == []
