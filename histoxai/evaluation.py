"""The evaluation table (the evaluate step's evaluation.parquet) in the thesis's Table 4.1 layout.

One row per sample ("sample 3 *" marks a training sample, whose row mixes its train, val and test
patches), then the pooled "train set", "validation set" and "test set"; one column per model and
target ("MD (multitask)"). The evaluate step's report and the run report both lay it out this way.
"""

from __future__ import annotations

import pandas as pd

from histoxai import artifacts, storage

SPLIT_LABELS = {"train": "train set", "val": "validation set", "test": "test set"}
TRAINING_MARK = " *"
TRAINING_NOTE = ("\\* a training sample: part of the pooled training data, so its row mixes train, "
                 "validation and test patches and is not an out-of-sample score.")


def column_label(model: str, target: str) -> str:
    return f"{target} ({model})"


def row_label(kind: str, group: str, training: bool) -> str:
    if kind == "split":
        return SPLIT_LABELS[group]
    return f"sample {group}{TRAINING_MARK if training else ''}"


def table41(table: pd.DataFrame, metric: str = "r2") -> pd.DataFrame:
    """Samples (natural order) then train / validation / test set as rows, model x target as columns."""
    columns = list(dict.fromkeys(zip(table["model"], table["target"], strict=True)))
    rows = list(dict.fromkeys(zip(table["kind"], table["group"], table["training"], strict=True)))
    samples = [r for r in rows if r[0] == "sample"]
    splits = sorted((r for r in rows if r[0] == "split"), key=lambda r: list(SPLIT_LABELS).index(r[1]))
    values = table.set_index(["kind", "group", "model", "target"])[metric]
    out = pd.DataFrame({"data": [row_label(*r) for r in [*samples, *splits]]})
    for model, target in columns:
        out[column_label(model, target)] = pd.array(
            [values.get((kind, group, model, target), pd.NA) for kind, group, _ in [*samples, *splits]],
            dtype="Float64")
    out.attrs["training_rows"] = [i for i, r in enumerate([*samples, *splits]) if r[0] == "sample" and r[2]]
    return out


def read_table41(evaluation_dir: str, metric: str = "r2") -> pd.DataFrame:
    """Table 4.1 of an evaluate output folder for one metric."""
    table = storage.read_parquet(storage.join(evaluation_dir, artifacts.EVALUATION_TABLE),
                                 "the evaluate step's evaluation table")
    return table41(table, metric)
