"""Run the whole pipeline on this machine (kfp.local, subprocess runner, this environment), and publish it.

kfp.local runs every task as a subprocess of the current Python (SubprocessRunner(use_venv=False):
no Docker, no per-task virtual environment), each as soon as its upstream tasks have finished
(pipelines/local_scheduler.py; kfp's own local runner runs them one after another), and writes each
output under OUT/<pipeline>-<timestamp>/<task>/<output>, the layout a KFP pipeline root has. Its verbose
per-task log goes to OUT/<pipeline>-<timestamp>.log; the terminal gets a progress bar, one line per
finished task and, on failure, the failing task with its error in one line. The report is also
copied to OUT/<pipeline>-<timestamp>/report.html, to open in a browser.

The pipeline root must be local: kfp.local writes a gs:// root to a local folder named `gs:`.
`publish_run` copies a finished run to gs:// (or another folder) instead.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import json
import logging
import re
import shutil
import sys
import threading
import time
import warnings
from pathlib import Path

from histoxai import artifacts, storage
from histoxai.errors import InputError

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_FAILED_TASK = re.compile(r"Inner task failed: '([^']+)'")
_ERROR_LINE = re.compile(r"^\s*(?:[\w.]+\.)?(\w*(?:Error|Exception|Exit)): (.+)$")


@dataclasses.dataclass(frozen=True)
class LocalRun:
    run_dir: Path  # OUT/<pipeline>-<timestamp>
    report_html: Path  # RUN_DIR/report.html
    summary: dict  # the report step's summary.json
    log: Path
    seconds: float
    steps: tuple = ()  # a StepTime per executed task in order of start, `started` counted from the run's

    def step_times(self) -> str:
        """'task N s (M CPU-s), ...' for the tasks that took at least a second, in order of start (the
        CPU time where the task was forked, pipelines/task_fork.py)."""
        return ", ".join(f"{step.task} {step.seconds:.0f} s"
                         + ("" if step.cpu_seconds is None else f" ({step.cpu_seconds:.0f} CPU-s)")
                         for step in self.steps if step.seconds >= 1)


class _TaskLog:
    """A stdout replacement that sends the run's log to a file and remembers the last error line printed.

    kfp.local's own "task finished" log lines get lost when ParallelFor branches log at the same time,
    so progress comes from _Progress instead.
    """

    def __init__(self, log_file):
        self._file, self._lock = log_file, threading.Lock()
        self._pending = ""
        self.last_error: str | None = None

    def write(self, text: str) -> int:
        with self._lock:
            text = _ANSI.sub("", text)
            self._file.write(text)
            *lines, self._pending = (self._pending + text).split("\n")
            for line in lines:
                error = _ERROR_LINE.match(line)
                if error:
                    self.last_error = f"{error.group(1)}: {error.group(2).strip()}"
        return len(text)

    def flush(self) -> None:
        self._file.flush()


class _Progress(threading.Thread):
    """Advances the bar for each task that finished: kfp writes a task's executor_output.json on success."""

    def __init__(self, root: Path, bar, terminal):
        super().__init__(daemon=True)
        self.root, self.bar, self.terminal = root, bar, terminal
        self.started = time.time()
        self.seen: set[Path] = set()
        self.stopping = threading.Event()

    def poll(self) -> None:
        try:
            found = sorted(self.root.glob("*/**/executor_output.json"))
        except FileNotFoundError:  # a step renamed its staging folder during the walk: look again later
            return
        for path in found:
            if path not in self.seen and path.stat().st_mtime >= self.started:
                self.seen.add(path)
                task = path.parent.relative_to(self.root).as_posix().split("/", 1)[-1]
                self.bar.update(1)
                self.bar.write(f"  done {task}  (after {time.time() - self.started:.0f} s)",
                               file=self.terminal)  # not sys.stdout: that is the log

    def run(self) -> None:
        while not self.stopping.wait(1.0):
            self.poll()

    def stop(self) -> None:
        self.stopping.set()
        self.join()
        self.poll()


def _sample_id(sample) -> str:
    """A sample id as the steps name it (a YAML list may give 3 or 3.0 for "3")."""
    return str(int(sample)) if isinstance(sample, float) and sample.is_integer() else str(sample)


def _found_samples(samples_uri: str) -> list[str]:
    """The ids of the sample folders under samples_uri that hold the layout's MR file."""
    from histoxai.layout import MR_MAT
    from histoxai.manifest import natural_key

    if storage.is_gcs(samples_uri):
        prefix, suffix = storage.join(samples_uri, ""), "/" + MR_MAT
        found = {f[len(prefix):-len(suffix)] for f in storage.list_files(samples_uri)
                 if f.startswith(prefix) and f.endswith(suffix)}
        found = {f for f in found if f and "/" not in f}
    else:
        root = Path(samples_uri)
        found = {p.name for p in root.iterdir() if (p / MR_MAT).is_file()} if root.is_dir() else set()
    return sorted(found, key=natural_key)


def check_samples(samples_uri: str, samples, train_samples) -> None:
    """Every sample in `samples` has its folder <samples_uri>/<id> with the layout's MR file, and every
    training sample is among them; else one InputError that names all the missing ones. Ids are
    checked first, as ingestion checks them, so no id reaches a path outside samples_uri."""
    from histoxai.components.ingest.inputs import check_sample_id
    from histoxai.layout import MR_MAT

    for sample in samples:
        check_sample_id(_sample_id(sample), "--samples: sample id")
    missing = [str(s) for s in samples if not storage.exists(storage.join(samples_uri, str(s), MR_MAT))]
    if missing:
        found = _found_samples(samples_uri)
        which = f"sample{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
        expected = storage.join(samples_uri, missing[0] if len(missing) == 1 else "<id>", MR_MAT)
        raise InputError(f"--samples: {which} not found under {samples_uri} (expected {expected}); "
                         + (f"found samples {', '.join(found)}" if found else
                            "found no sample folder there"))
    given = {_sample_id(s) for s in samples}
    outside = [str(s) for s in train_samples if _sample_id(s) not in given]
    if outside:
        raise InputError(f"--train-samples: {', '.join(outside)} not among --samples "
                         f"{', '.join(str(s) for s in samples)}; expected a subset of the samples to ingest")


def run_local(arguments: dict, out: str, *, options=None, task_server=None) -> LocalRun:
    """Run the pipeline with `arguments` (pipeline parameters) into the local folder `out`; its tasks
    fork from `task_server` (pipelines/task_fork.py: task_server()) or from a server of its own."""
    from kfp import local
    from tqdm import tqdm

    from histoxai.pipelines.local_scheduler import StepTime, concurrent_tasks
    from histoxai.pipelines.params import check_parameters
    from histoxai.pipelines.pipeline import CompileOptions, build_pipeline, task_count
    from histoxai.pipelines.task_fork import forked_tasks

    if storage.is_gcs(out):
        raise InputError(f"--out {out}: a local run needs a local folder (kfp.local would write a gs:// "
                         "pipeline root to a local folder named 'gs:'); give a folder and --publish gs://...")
    # no retries: a step that fails here fails the same way on a second try
    pipeline_func = build_pipeline(options or CompileOptions(retries=0))
    arguments = check_parameters(arguments, pipeline_func.component_spec)
    inputs = pipeline_func.component_spec.inputs
    # before anything is written: a missing sample would otherwise fail minutes later, in its ingest task
    check_samples(arguments["samples_uri"], arguments.get("samples", inputs["samples"].default),
                  arguments.get("train_samples", inputs["train_samples"].default))
    root = Path(out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    log = root / f"{pipeline_func.name}-{time.strftime('%Y-%m-%d-%H-%M-%S')}.log"
    # no kfp.local cache: its keys hold the artifacts' URIs, which are new in every run
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    step_times: list[StepTime] = []
    started = time.perf_counter()
    terminal, print_function = sys.stdout, builtins.print
    root_logger = logging.getLogger()
    handlers, level = list(root_logger.handlers), root_logger.level
    with open(log, "w") as log_file, \
            tqdm(total=task_count(arguments, pipeline_func), desc="pipeline", unit="task") as bar:
        task_log, progress = _TaskLog(log_file), _Progress(root, bar, terminal)
        progress.start()
        try:
            with contextlib.redirect_stdout(task_log), warnings.catch_warnings(), \
                    concurrent_tasks(step_times=step_times), forked_tasks(task_server):
                # accelerator, retry and image settings only mean something on a cluster
                warnings.filterwarnings("ignore", module=r"kfp\.local")
                task = pipeline_func(**arguments)
        except RuntimeError as err:
            failed = _FAILED_TASK.search(_ANSI.sub("", str(err)))
            if not failed:
                raise
            error = task_log.last_error or "see the log"
            raise InputError(f"pipeline task {failed.group(1)} failed: {error} (full log: {log})") from None
        finally:
            progress.stop()
            # kfp.local swaps print() and the root logger's handlers per task; parallel branches can
            # leave them swapped (a handler writing to the closed log), so put them back
            builtins.print = print_function
            root_logger.handlers[:] = handlers
            root_logger.setLevel(level)
    report_artifact = Path(task.outputs["report"].uri)
    run_dir = report_artifact.parents[1]
    # KFP names the artifact file after the output; a copy with .html opens in a browser
    report_html = run_dir / artifacts.REPORT_HTML
    shutil.copyfile(report_artifact, report_html)
    summary = json.loads(Path(task.outputs["summary"].uri).read_text())
    steps = tuple(dataclasses.replace(t, started=round(t.started - started, 1), seconds=round(t.seconds, 1))
                  for t in sorted(step_times, key=lambda t: t.started))
    return LocalRun(run_dir=run_dir, report_html=report_html, summary=summary, log=log,
                    seconds=time.perf_counter() - started, steps=steps)


def _relocated_table(table: Path, old_prefix: str, new_prefix: str, out: Path) -> bool:
    """Write `table` to `out` with every string cell that starts with old_prefix moved to new_prefix
    (the shard and map locations the steps recorded); False when no cell names the old place."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = pq.read_table(table)
    changed = False
    for index, column in enumerate(data.columns):
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            continue
        values = column.to_pylist()
        moved = [new_prefix + v[len(old_prefix):] if v is not None and v.startswith(old_prefix) else v
                 for v in values]
        if moved != values:
            data = data.set_column(index, data.field(index), pa.array(moved, type=column.type))
            changed = True
    if changed:
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(data, out)
    return changed


def publish_run(run: LocalRun, destination: str) -> str:
    """Copy a finished local run (its folder and log) to DESTINATION/<run name>; returns that URI.

    Tables that locate files of the run (split.parquet's shard_uri, the saliency map tables) are
    rewritten to name the published copies, so the app and later steps can read the run from there.
    """
    import tempfile

    target = storage.join(destination, run.run_dir.name)
    if storage.list_files(target):
        raise InputError(f"--publish {destination}: {target} already exists; expected a new location")
    with tempfile.TemporaryDirectory(prefix="histoxai-publish-") as tmp:
        replacements = {}
        for table in sorted(run.run_dir.rglob("*.parquet")):
            relocated = Path(tmp) / table.relative_to(run.run_dir)
            if _relocated_table(table, f"{run.run_dir}/", f"{target}/", relocated):
                replacements[table] = relocated
        storage.upload_file(run.log, storage.join(target, "run.log"))
        storage.publish_dir(run.run_dir, target, commit_last="report/summary", replacements=replacements)
    return target
