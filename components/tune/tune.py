"""Hyperparameter search with Optuna over the training code of `histoxai train`, resumable from OUT.

`tune(base, space, data_uri, out_uri)` runs trials: each samples a config from the search space
(components/tune/space.py), trains it with histoxai/training.py's `train()` (the same code as
`histoxai train`) and scores it by the mean validation R² over the objective targets. Each epoch's
validation R² goes to a median pruner, which stops trials that fall behind earlier ones; a diverged
trial (non-finite R²) is pruned at once. The sampler is TPE, seeded.

OUT/study.journal (Optuna's journal file) is the resume state: a killed run restarted with the same
OUT continues the same study, keeps its finished trials and retries the trial it was in (so one
process at a time per OUT: a trial found RUNNING at the start is taken as interrupted). For gs://
OUT the journal is kept locally and mirrored to the bucket after every trial. At the end OUT gets
trials.parquet / trials.csv, summary.md and best_config.yaml (written last: it marks a complete
result), which `histoxai train --config` accepts unchanged.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from histoxai import artifacts, storage
from histoxai.artifacts import BEST_TRIAL
from histoxai.components.tune.params import DEFAULTS
from histoxai.components.tune.results import TRIALS
from histoxai.components.tune.space import SearchSpace
from histoxai.config import TrainConfig, with_values
from histoxai.errors import InputError
from histoxai.outputs import check_writable, clear_stale_scratch, scratch_dir, staged
from histoxai.training import STOPPED_EXIT_CODE

STUDY_NAME = "histoxai-tune"
# What a study's OUT holds
OWN_FILES = (artifacts.STUDY_JOURNAL, f"{TRIALS}.parquet", f"{TRIALS}.csv", artifacts.TUNE_SUMMARY,
             artifacts.BEST_CONFIG, artifacts.BEST_MODEL, artifacts.VIZIER_JOB)
SPEC_ATTR = "histoxai_spec"  # what the study searches; a restart must search the same


def objective_score(values: Mapping[str, float], targets: Sequence[str], key: str = "{}") -> float:
    """Mean of the targets' R² (`key` formats a target into the mapping's key, e.g. 'val_{}_r2')."""
    scores = [values[key.format(t)] for t in targets]
    return float(sum(scores) / len(scores))


def check_objective_targets(start: TrainConfig, objective_targets: Sequence[str] | None) -> tuple[str, ...]:
    if not start.targets:
        raise InputError("no targets: give --targets (e.g. MD,FA or CC) or `targets` in the config")
    chosen = tuple(objective_targets) if objective_targets else start.targets
    extra = sorted(set(chosen) - set(start.targets))
    if extra or not chosen:
        raise InputError(f"objective targets {list(chosen)}: expected a non-empty subset of the trained "
                         f"targets {list(start.targets)}")
    return chosen


@contextlib.contextmanager
def _study_file(out_uri: str, overwrite: bool) -> Iterator[tuple[Path, Any]]:
    """The local journal path and a function that mirrors it to OUT (a no-op for local OUT)."""
    if not storage.is_gcs(out_uri):
        path = Path(out_uri) / artifacts.STUDY_JOURNAL
        path.parent.mkdir(parents=True, exist_ok=True)
        if overwrite:
            path.unlink(missing_ok=True)
        yield path, lambda: None
        return
    remote = storage.join(out_uri, artifacts.STUDY_JOURNAL)
    with scratch_dir("study") as tmp:
        path = tmp / artifacts.STUDY_JOURNAL
        if not overwrite and storage.exists(remote):
            storage.download_file(remote, path)
        yield path, lambda: storage.upload_file(path, remote) if path.exists() else None


def _check_out(out_uri: str, overwrite: bool) -> None:
    """OUT must be new, empty or a study's own folder: anything else is kept unless --overwrite."""
    if storage.is_gcs(out_uri):
        prefix = out_uri.rstrip("/") + "/"
        names = {uri[len(prefix):].split("/", 1)[0] for uri in storage.list_files(out_uri)}
    else:
        check_writable(out_uri)
        names = set(os.listdir(out_uri)) if os.path.isdir(out_uri) else set()
    own = (artifacts.STUDY_JOURNAL, *(f".{name}." for name in OWN_FILES))  # + lock and temporary files
    foreign = sorted(n for n in names - set(OWN_FILES) if not n.startswith(own))
    if foreign and not overwrite:
        shown = ", ".join(foreign[:4]) + (", ..." if len(foreign) > 4 else "")
        raise InputError(f"{out_uri}: output folder holds files that are not a study's ({shown}); pass "
                         "--overwrite to write the study there anyway, or choose another --out")


def _repair_journal(path: Path) -> None:
    """A process killed while appending can leave a partial last line; drop it so appends stay valid."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def _open_study(path: Path, spec: dict, seed: int, startup_trials: int, warmup_epochs: int, out_uri: str):
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    _repair_journal(path)
    study = optuna.create_study(
        storage=JournalStorage(JournalFileBackend(str(path))), study_name=STUDY_NAME, direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=warmup_epochs),
        load_if_exists=True)
    saved = study.user_attrs.get(SPEC_ATTR)
    if saved is None:
        study.set_user_attr(SPEC_ATTR, spec)
    elif saved != spec:
        changed = sorted(k for k in spec if saved.get(k) != spec[k])
        raise InputError(f"{out_uri}: holds a study of another search ({changed} differ); pass --overwrite "
                         "to start over, or choose another --out")
    return study


def _retry_interrupted(study) -> int:
    """Trials left RUNNING by a killed process: mark them failed and queue their parameters again."""
    from optuna.trial import TrialState

    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number})
    return len(stale)


def _finished(study) -> int:
    """Trials that count against --tuning-trials: finished ones, except those interrupted and retried."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return sum(1 for t in trials if t.state in done and t.number not in retried)


def _best_so_far(study) -> float | None:
    try:
        return study.best_value
    except ValueError:  # no complete trial yet
        return None


def _keep_best(trial, score: float, trained: Path, best_model_uri: str) -> None:
    """When the finished trial beats every complete one before it, its training output (model.keras,
    config.yaml, history.csv, metrics.json, tensorboard/) replaces best_model_uri, whole, with
    trial.json naming the trial: the train step reuses it instead of training the same config again."""
    best = _best_so_far(trial.study)
    if best is not None and score <= best:
        return
    with staged(best_model_uri, overwrite=True, commit_last=artifacts.TRAIN_METRICS,
                option="best model") as stage:
        shutil.copytree(trained, stage, dirs_exist_ok=True)
        (stage / BEST_TRIAL).write_text(json.dumps({"trial": trial.number, "objective": score}))


def _make_objective(space: SearchSpace, start: TrainConfig, data_uri: str, targets: tuple[str, ...],
                    best_model_uri: str):
    import keras
    import optuna

    from histoxai.training import train

    def objective(trial) -> float:
        values = space.sample(trial, start)
        config = with_values(start, values, f"trial {trial.number}")
        print(f"trial {trial.number}: {values}", flush=True)

        def report(epoch: int, logs: dict) -> None:
            score = objective_score(logs, targets, "val_{}_r2")
            if not math.isfinite(score):
                trial.set_user_attr("epochs", epoch)
                trial.set_user_attr("note", f"diverged: validation R² is {score} at epoch {epoch}")
                raise optuna.TrialPruned(trial.user_attrs["note"])
            trial.report(score, epoch)
            if trial.should_prune():
                trial.set_user_attr("epochs", epoch)
                trial.set_user_attr("note", f"pruned at epoch {epoch}: validation R² {score:.4g} behind "
                                            "the median of earlier trials")
                raise optuna.TrialPruned(trial.user_attrs["note"])

        try:
            with scratch_dir(f"trial{trial.number}") as work:  # a killed run's is removed by the next
                metrics = train(config, data_uri, str(work), on_epoch_end=report, scored_splits=("val",))
                score = objective_score(metrics["r2"]["val"], targets)
                if math.isfinite(score):
                    _keep_best(trial, score, work, best_model_uri)
        except InputError as err:
            trial.set_user_attr("note", f"failed: {err}")
            raise
        finally:
            keras.backend.clear_session()  # free the trial's graphs before the next one
        for target, r2 in metrics["r2"]["val"].items():
            trial.set_user_attr(f"val_{target}_r2", r2)
        trial.set_user_attr("epochs", sum(metrics["epochs"].values()))
        return score

    return objective


def tune(base: TrainConfig, space: SearchSpace, data_uri: str, out_uri: str, *,
         n_trials: int | None = DEFAULTS.tuning_trials, timeout_s: float | None = None,
         objective_targets: Sequence[str] | None = None, startup_trials: int = DEFAULTS.startup_trials,
         warmup_epochs: int = DEFAULTS.warmup_epochs,
         seed: int | None = None, enqueue: Sequence[Mapping[str, Any]] = (), overwrite: bool = False,
         stop_after_trials: int | None = None, best_model_uri: str | None = None) -> dict:
    """Run (or continue) the study in OUT until it holds n_trials finished trials or timeout_s has
    passed in this call; write the results and return the summary (see results.summarize), with
    `best_model`: where the best trial's trained model is (best_model_uri, default OUT/best_model).

    startup_trials: trials sampled at random and never pruned before TPE and the pruner take over;
    warmup_epochs: a trial may be pruned from the end of this epoch on; seed: the sampler's (default
    the config's); enqueue: parameter sets to try first (e.g. the thesis's); stop_after_trials: exit
    abruptly (code 75) after that many trials of this call, as a preempted job would.
    """
    import optuna
    from tqdm import tqdm

    from histoxai.components.tune import results
    from histoxai.training import load_splits

    if n_trials is None and timeout_s is None:
        raise InputError("no budget: give --tuning-trials and/or --timeout")
    if n_trials is not None and n_trials < 1:
        raise InputError(f"--tuning-trials {n_trials}: expected a positive integer")
    if warmup_epochs < 1:
        raise InputError(f"--warmup-epochs {warmup_epochs}: expected a positive integer")
    if timeout_s is not None and timeout_s <= 0:
        raise InputError(f"--timeout {timeout_s}: expected a positive number of seconds")
    out_uri, data_uri = str(out_uri), str(data_uri)
    best_model_uri = str(best_model_uri or storage.join(out_uri, artifacts.BEST_MODEL))
    _check_out(out_uri, overwrite)
    if overwrite:
        storage.remove(best_model_uri)
    clear_stale_scratch()
    start = space.start_config(base)
    space.check_against(start)
    targets = check_objective_targets(start, objective_targets)
    load_splits(data_uri, start.targets)  # a bad --data fails here, not in every trial
    seed = start.seed if seed is None else seed
    spec = {"base_config": start.to_dict(), "space": space.to_dict(), "data": data_uri,
            "objective_targets": list(targets)}
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is printed below

    with _study_file(out_uri, overwrite) as (path, mirror):
        study = _open_study(path, spec, seed, startup_trials, warmup_epochs, out_uri)
        retried = _retry_interrupted(study)
        done = _finished(study)
        if done or retried:
            print(f"resuming the study in {out_uri}: {done} finished trials"
                  + (f", retrying {retried} interrupted" if retried else ""), flush=True)
        for params in enqueue:  # skipped where a trial already has these values (a restart)
            study.enqueue_trial(dict(params), skip_if_exists=True)
        mirror()
        remaining = None if n_trials is None else max(0, n_trials - done)
        progress = tqdm(total=remaining, desc="trials", unit="trial", file=sys.stderr)
        ran = [0]

        def after_trial(study_, trial) -> None:
            mirror()
            ran[0] += 1
            progress.update(1)
            shown = (f"mean validation R² {trial.value:.4f}" if trial.state.name == "COMPLETE"
                     else trial.user_attrs.get("note", ""))
            print(f"trial {trial.number} {trial.state.name.lower()}: {shown}", flush=True)
            if stop_after_trials is not None and ran[0] >= stop_after_trials:
                print(f"stopping after {ran[0]} trials as asked (--stop-after-trials)", flush=True)
                sys.stdout.flush()
                os._exit(STOPPED_EXIT_CODE)

        if remaining != 0:
            study.optimize(_make_objective(space, start, data_uri, targets, best_model_uri),
                           n_trials=remaining, timeout=timeout_s, catch=(InputError,),
                           callbacks=[after_trial])
        progress.close()
        mirror()
        complete = any(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False))
        kept = _kept_best(best_model_uri, study.best_trial.number) if complete else None
        summary = results.write_results(study, start, space, targets, out_uri, data_uri, seed, kept)
        return {**summary, "best_model": kept}


def _kept_best(best_model_uri: str, best_trial: int) -> str | None:
    """best_model_uri when it holds the best trial's model; else (a trial killed after it was kept and
    retried with a lower score) it is removed, and the best config trains from scratch."""
    marker = storage.join(best_model_uri, BEST_TRIAL)
    kept = json.loads(storage.read_text(marker))["trial"] if storage.exists(marker) else None
    if kept == best_trial:
        return best_model_uri
    if kept is not None:
        print(f"{best_model_uri} holds trial {kept}, not the best trial {best_trial}: removed", flush=True)
    storage.remove(best_model_uri)
    return None
