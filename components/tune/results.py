"""What a study leaves in OUT: the trials table, the best config as YAML, and a Markdown summary.

trials.parquet / trials.csv: one row per trial (number, state, objective (complete trials),
last_reported (the last epoch's mean validation R², also for pruned trials), duration_s, epochs, the
validation R² of each trained target, every searched parameter (empty where a conditional one was
not used), note: why a trial was pruned or failed). best_config.yaml: the full resolved TrainConfig
of the best trial, which `histoxai train --config` accepts unchanged. summary.md: the best trial,
the top 10 and the parameters' importances once enough trials finished.
"""

from __future__ import annotations

from collections.abc import Sequence

from histoxai import artifacts, storage
from histoxai.components.tune.space import SearchSpace
from histoxai.config import TrainConfig, with_values
from histoxai.errors import InputError

TRIALS = "trials"  # .parquet and .csv
MIN_TRIALS_FOR_IMPORTANCE = 10
TOP = 10
STATE_WORDS = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}


def trials_frame(study, space: SearchSpace, targets_trained: Sequence[str]):
    """The trials table as a DataFrame, in trial order."""
    import pandas as pd

    rows = []
    for trial in study.get_trials(deepcopy=False):
        duration = trial.duration.total_seconds() if trial.duration is not None else None
        epochs = trial.user_attrs.get("epochs", len(trial.intermediate_values) or None)
        note = trial.user_attrs.get("note")
        if note is None and trial.state.name == "FAIL":
            note = "interrupted: the tuning process stopped during this trial"
        if "retry_of" in trial.user_attrs:
            note = f"retry of trial {trial.user_attrs['retry_of']}" + (f"; {note}" if note else "")
        reported = trial.intermediate_values
        last = reported[max(reported)] if reported else None
        rows.append({"number": trial.number, "state": trial.state.name,
                     "objective": trial.value if trial.state.name == "COMPLETE" else None,
                     "last_reported": last, "duration_s": duration, "epochs": epochs,
                     **{f"val_{t}_r2": trial.user_attrs.get(f"val_{t}_r2") for t in targets_trained},
                     **{name: trial.params.get(name) for name in space.names}, "note": note})
    frame = pd.DataFrame(rows)
    for name in space.names:  # keep 1 as 1 (not 1.0) where other trials did not use the parameter
        frame[name] = pd.Series([row[name] for row in rows], dtype=object)
    return frame


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def importances(study) -> tuple[dict[str, float] | None, str]:
    """PED-ANOVA importances of the searched parameters, or why there are none.

    (Optuna's fANOVA would need scikit-learn; PED-ANOVA needs nothing more than Optuna, and it rates
    a conditional parameter within the trials that used it.)"""
    import optuna
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < MIN_TRIALS_FOR_IMPORTANCE:
        return None, (f"not computed: {len(complete)} complete trials, at least "
                      f"{MIN_TRIALS_FOR_IMPORTANCE} needed")
    try:
        values = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    except (RuntimeError, ValueError) as err:
        return None, f"not computed: {err}"
    if not values:
        return None, "not computed: no parameter was sampled in the complete trials"
    return values, ("PED-ANOVA over the complete trials: how differently each parameter is distributed "
                    "in the best 10% of them than in all of them")


def _summary(study, frame, best, start: TrainConfig, space: SearchSpace, targets, out_uri: str,
             data_uri: str, seed: int, best_model_uri: str | None) -> str:
    import pandas as pd

    from histoxai.metrics import markdown_table

    counts = frame["state"].value_counts().to_dict()
    shown_counts = ", ".join(f"{counts.get(s, 0)} {w}" for s, w in STATE_WORDS.items())
    best_config = storage.join(out_uri, artifacts.BEST_CONFIG)
    lines = [
        "# Hyperparameter tuning", "",
        f"- Study: `{storage.join(out_uri, 'study.journal')}` on `{data_uri}`",
        f"- Objective: mean validation R² over {', '.join(targets)} (maximised); TPE sampler (seed {seed}), "
        "median pruner on each epoch's validation R²",
        f"- Trials: {len(frame)} ({shown_counts}); searched: {', '.join(space.names)}", "",
        f"## Best trial: #{best.number}", "",
        f"Objective {best.value:.4f}; "
        + ", ".join(f"val R² {t} {best.user_attrs[f'val_{t}_r2']:.4f}" for t in start.targets
                    if best.user_attrs.get(f"val_{t}_r2") is not None), "",
    ]
    params = pd.DataFrame({"parameter": list(best.params), "value": [_cell(v) for v in best.params.values()]})
    reuse = (f" --reuse {best_model_uri}` (the trial's model, kept there, is published instead of "
             "training the same config again)") if best_model_uri else "`"
    lines += [markdown_table(params), f"Train it: `histoxai train --config {best_config} --data {data_uri} "
              f"--out MODEL_DIR{reuse}", "", f"## Top {TOP} trials", ""]
    top = frame[frame["state"] == "COMPLETE"].sort_values("objective", ascending=False).head(TOP)
    columns = ["number", "objective", *[c for c in frame.columns if c.startswith("val_")], *space.names]
    lines.append(markdown_table(top[columns].map(_cell) if not top.empty else top[columns]))
    values, how = importances(study)
    lines += ["## Parameter importances", "", how, ""]
    if values:
        lines.append(markdown_table(pd.DataFrame({"parameter": list(values),
                                                  "importance": [f"{v:.3f}" for v in values.values()]})))
    return "\n".join(lines)


def write_results(study, start: TrainConfig, space: SearchSpace, targets: Sequence[str], out_uri: str,
                  data_uri: str, seed: int, best_model_uri: str | None) -> dict:
    """Write the trials table, summary and best config (last) to OUT; return the summary numbers.
    best_model_uri: where the study keeps the best trial's model (named in the summary), or None."""
    import io

    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    frame = trials_frame(study, space, start.targets)
    if not complete:
        notes = [n for n in frame["note"].dropna()] if not frame.empty else []
        raise InputError(f"{out_uri}: no trial completed ({len(frame)} trials"
                         + (f"; first note: {notes[0]}" if notes else "") + ")")
    best = study.best_trial
    best_config = with_values(start, best.params, f"trial {best.number}")
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    storage.write_bytes(storage.join(out_uri, f"{TRIALS}.parquet"), buffer.getvalue())
    storage.write_text(storage.join(out_uri, f"{TRIALS}.csv"), frame.to_csv(index=False))
    storage.write_text(storage.join(out_uri, artifacts.TUNE_SUMMARY),
                       _summary(study, frame, best, start, space, targets, out_uri, data_uri, seed,
                                best_model_uri))
    header = (f"# Best configuration of the study in {out_uri}: trial {best.number}, mean validation R² "
              f"over {', '.join(targets)} = {best.value:.4f}.\n# Train it with: histoxai train --config "
              "THIS_FILE --data SPLIT --out MODEL_DIR"
              + (f" --reuse {best_model_uri}\n# (publishes the trial's model instead of training it again)\n"
                 if best_model_uri else "\n"))
    storage.write_text(storage.join(out_uri, artifacts.BEST_CONFIG), header + best_config.to_yaml())
    counts = frame["state"].value_counts().to_dict()
    return {"best_trial": best.number, "objective": float(best.value), "params": dict(best.params),
            "val_r2": {t: best.user_attrs.get(f"val_{t}_r2") for t in start.targets},
            "objective_targets": list(targets), "trials": len(frame),
            "complete": counts.get("COMPLETE", 0), "pruned": counts.get("PRUNED", 0),
            "failed": counts.get("FAIL", 0), "best_config": storage.join(out_uri, artifacts.BEST_CONFIG)}
