"""The champions an evaluation scores beside the new models, and how each pair compared.

A champion folder is what `histoxai models fetch` (the pipeline's champion step) writes: the version's
files and champion.json naming the registry, model and version, or only champion.json with version
null when the registry has no champion yet. Each champion is scored as one more model named
`<model>_champion` on the same patches; the comparison (histoxai.model_registry.gate) then cuts the
patches neither model trained on out of those same predictions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from histoxai import artifacts, storage
from histoxai.errors import InputError
from histoxai.model_registry import TRAINING_PATCHES, gate

SUFFIX = "_champion"


@dataclass(frozen=True)
class Champion:
    challenger: str  # the model it is compared with
    name: str  # its name in the evaluation: <challenger>_champion
    uri: str
    info: dict  # champion.json


def champions(given: Mapping[str, str] | None, models: list[str]) -> list[Champion]:
    """The champions to score (folders whose champion.json names a version), checked against `models`."""
    found = []
    for challenger, uri in (given or {}).items():
        if challenger not in models:
            raise InputError(f"--champion {challenger}={uri}: no model named {challenger!r} to compare it "
                             f"with; expected one of {', '.join(models)}")
        info = artifacts.read_json(uri, artifacts.CHAMPION_INFO)
        if info.get("version") is None:
            continue  # the registry has no champion yet: nothing to compare
        if not storage.exists(storage.join(uri, TRAINING_PATCHES)):
            raise InputError(f"{uri}: no {TRAINING_PATCHES}; expected the champion's files as "
                             "`histoxai models fetch` writes them")
        found.append(Champion(challenger, f"{challenger}{SUFFIX}", str(uri).rstrip("/"), info))
    return found


def write_comparisons(stage: Path, pairs: list[Champion], predictions: Mapping[str, pd.DataFrame],
                      targets: Mapping[str, tuple[str, ...]], training_samples: list[str]) -> dict:
    """comparison.json and comparison.md in the evaluation: per challenger, both models' scores on the
    patches neither trained on. Returns {challenger: comparison}."""
    result = {}
    for pair in pairs:
        seen = storage.read_parquet(storage.join(pair.uri, TRAINING_PATCHES),
                                    "the patches the champion trained on")
        shared = [t for t in targets[pair.challenger] if t in targets[pair.name]]
        if not shared:
            raise InputError(f"{pair.uri}: the champion predicts {list(targets[pair.name])}, the new model "
                             f"{pair.challenger} {list(targets[pair.challenger])}; expected the same targets "
                             "(a model with other targets needs its own model name)")
        comparison = gate.compare(predictions[pair.challenger], predictions[pair.name], shared,
                                  training_samples, seen)
        result[pair.challenger] = {**comparison, "champion": pair.info}
    if result:
        (stage / artifacts.COMPARISON).write_text(gate.dumps(result))
    return result
