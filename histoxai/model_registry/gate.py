"""Champion against challenger on the same patches, and the rule that decides a promotion.

The comparison set holds only patches that neither model trained or validated on: the challenger's
held-out samples (those outside the current split's training samples) minus every patch the champion
saw (its TRAINING_PATCHES, which include the guard gaps around them); when no such patch exists, the
current split's test set minus the champion's patches. Both models are scored per sample (or on the
test set) with the same metric; a target's score is the mean over those groups, and the primary score
the mean over targets. A champion scored on its own training voxels would win unfairly, and one scored
on other data is no comparison: hence one set, cut from the same predictions table of one evaluation.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

import numpy as np
import pandas as pd

from histoxai.errors import InputError
from histoxai.manifest import natural_key
from histoxai.metrics import metrics_by_group

RULE_METRICS = ("r2", "pearson_r2")  # higher is better for both
SEEN_SPLITS = ("train", "val", "gap")  # what a version records as seen (gap: neighbours of training voxels)


@dataclasses.dataclass(frozen=True)
class PromotionRule:
    """Promote when the primary score beats the champion's by at least `margin` and no target's score
    falls by more than `tolerance`. Defaults: components/register/params.py."""

    metric: str
    margin: float
    tolerance: float

    def __post_init__(self):
        if self.metric not in RULE_METRICS:
            raise InputError(f"promotion metric {self.metric!r}: expected one of {', '.join(RULE_METRICS)}")
        for name in ("margin", "tolerance"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not np.isfinite(value) or value < 0:
                raise InputError(f"promotion {name} {value!r}: expected a number >= 0")


def seen_patches(split_frame: pd.DataFrame) -> pd.DataFrame:
    """sample, row, col, split of the patches a model trained on with this split (its record)."""
    seen = split_frame[split_frame["split"].isin(SEEN_SPLITS)]
    return seen.loc[:, ["sample", "row", "col", "split"]].astype({"sample": str}).reset_index(drop=True)


def comparison_set(predictions: pd.DataFrame, training_samples: Sequence[str],
                   champion_seen: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The rows of `predictions` (sample, row, col, split, ...) both models may be scored on, with a
    `group` column, and how they were chosen ('held-out samples' or 'test set')."""
    seen = pd.MultiIndex.from_frame(champion_seen.loc[:, ["sample", "row", "col"]].astype(
        {"sample": str, "row": "int64", "col": "int64"}))
    keys = pd.MultiIndex.from_frame(predictions.loc[:, ["sample", "row", "col"]].astype(
        {"sample": str, "row": "int64", "col": "int64"}))
    unseen = predictions[~keys.isin(seen)]
    held_out = unseen[~unseen["sample"].astype(str).isin([str(s) for s in training_samples])]
    if not held_out.empty:
        return held_out.assign(group=held_out["sample"].astype(str)), "held-out samples"
    test = unseen[unseen["split"] == "test"]
    return test.assign(group="test"), "test set"


def compare(challenger: pd.DataFrame, champion: pd.DataFrame, targets: Sequence[str],
            training_samples: Sequence[str], champion_seen: pd.DataFrame) -> dict:
    """Both models' RULE_METRICS per target and group on the comparison set. `challenger` and `champion` are
    predictions tables of the same patches (sample, row, col, split, <T>_measured, <T>_predicted)."""
    keys = ["sample", "row", "col"]
    both = challenger.merge(champion, on=keys, suffixes=("", "_champion"), validate="one_to_one")
    if len(both) != len(challenger):
        raise InputError("champion and challenger were not scored on the same patches; expected one "
                         "evaluation of both on one split")
    rows, basis = comparison_set(both, training_samples, champion_seen)
    table = []
    for target in targets:
        measured = f"{target}_measured"
        for model, predicted in (("challenger", f"{target}_predicted"),
                                 ("champion", f"{target}_predicted_champion")):
            if rows.empty:
                continue
            scores = metrics_by_group(rows, "group", measured, predicted)
            for score in scores.itertuples():
                values = {m: getattr(score, m) for m in RULE_METRICS}
                table.append({"target": target, "group": str(score.group), "model": model, "n": int(score.n),
                              **{m: None if v is pd.NA or v is None else float(v)
                                 for m, v in values.items()}})
    return {"basis": basis, "targets": list(targets), "n": int(len(rows)),
            "groups": sorted({r["group"] for r in table}, key=natural_key), "scores": table}


def target_scores(comparison: dict, model: str, metric: str) -> dict[str, float | None]:
    """Mean `metric` over the groups per target; None when any group's value is undefined."""
    out = {}
    for target in comparison["targets"]:
        values = [r[metric] for r in comparison["scores"] if r["target"] == target and r["model"] == model]
        out[target] = None if not values or any(v is None for v in values) else float(np.mean(values))
    return out


def decide(comparison: dict | None, rule: PromotionRule) -> dict:
    """The verdict: {promote, reason, challenger, champion (primary scores), per_target, rule}.
    No champion: promote."""
    if comparison is None:
        return {"promote": True, "reason": "no champion yet: the first version becomes the champion",
                "challenger": None, "champion": None, "per_target": {}}
    new = target_scores(comparison, "challenger", rule.metric)
    old = target_scores(comparison, "champion", rule.metric)
    per_target = {t: {"challenger": new[t], "champion": old[t]} for t in comparison["targets"]}
    verdict = {"challenger": None, "champion": None, "per_target": per_target, "promote": False}
    if comparison["n"] == 0:
        return {**verdict, "reason": "no patch that neither model trained on: nothing to compare them on"}
    undefined = [t for t in comparison["targets"] if new[t] is None or old[t] is None]
    if undefined:
        return {**verdict, "reason": f"{rule.metric} undefined for {', '.join(undefined)} on the "
                                     f"{comparison['basis']}: no fair comparison"}
    primary_new, primary_old = float(np.mean(list(new.values()))), float(np.mean(list(old.values())))
    verdict.update(challenger=primary_new, champion=primary_old)
    worse = [t for t in comparison["targets"] if new[t] < old[t] - rule.tolerance]
    if worse:
        return {**verdict, "reason": f"{', '.join(worse)} worse than the champion's by more than "
                                     f"the tolerance {rule.tolerance:g}"}
    if primary_new < primary_old + rule.margin:
        return {**verdict, "reason": f"mean {rule.metric} {primary_new:.4f} does not beat the champion's "
                                     f"{primary_old:.4f} by the margin {rule.margin:g}"}
    return {**verdict, "promote": True,
            "reason": f"mean {rule.metric} {primary_new:.4f} beats the champion's {primary_old:.4f} by "
                      f"{primary_new - primary_old:.4f} (margin {rule.margin:g}), no target worse by more "
                      f"than {rule.tolerance:g}"}


def markdown(comparison: dict | None, verdict: dict, rule: PromotionRule, *, name: str, champion: str,
             challenger: str) -> str:
    """Champion vs challenger per target and group, and the verdict, as a Markdown section."""
    lines = [f"## {name}: challenger {challenger} against champion {champion}", ""]
    if comparison is None:
        return "\n".join([*lines, f"**Verdict: promoted.** {verdict['reason']}.", ""])
    lines += [f"Scored on the {comparison['basis']} ({comparison['n']} patches that neither model trained "
              f"or validated on); metric {rule.metric}.", "",
              "| target | group | n | champion | challenger | difference |", "|---|---|---|---|---|---|"]
    by_key = {(r["target"], r["group"], r["model"]): r for r in comparison["scores"]}
    for target in comparison["targets"]:
        for group in comparison["groups"]:
            old, new = by_key.get((target, group, "champion")), by_key.get((target, group, "challenger"))
            if old is None or new is None:
                continue
            a, b = old[rule.metric], new[rule.metric]
            diff = f"{b - a:+.3f}" if None not in (a, b) else "n/a"
            lines.append(f"| {target} | {group} | {new['n']} | {_fmt(a)} | {_fmt(b)} | {diff} |")
    for target, pair in verdict["per_target"].items():
        lines.append(f"| {target} | mean | | {_fmt(pair['champion'])} | {_fmt(pair['challenger'])} | |")
    word = "promoted" if verdict["promote"] else "not promoted"
    return "\n".join([*lines, "", f"**Verdict: {word}.** {verdict['reason']}.", ""])


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def dumps(comparison: dict) -> str:
    return json.dumps(comparison, indent=1) + "\n"
