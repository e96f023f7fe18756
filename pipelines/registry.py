"""The sample registry of the retraining trigger: which samples a run trains on, and the runs started.

One JSON object <samples>/histoxai-registry.json, changed only by read-modify-write with the generation
that was read as precondition (so concurrent deliveries never lose an entry). Each sample is `active`
or `quarantined` (left out of runs, with the reason and who decided: the upload check or a person);
runs are claimed per READY marker generation so that a redelivered event starts nothing twice.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import time
from collections.abc import Callable
from typing import Any

from histoxai import storage
from histoxai.errors import InputError

REGISTRY = "histoxai-registry.json"
ACTIVE, QUARANTINED = "active", "quarantined"
_WRITE_ATTEMPTS = 30


class RetryLater(InputError):
    """Nothing is wrong with the upload, but it cannot be handled now: the event should come again."""


def registry_uri(samples_uri: str) -> str:
    return storage.join(samples_uri, REGISTRY)


def update_registry(samples_uri: str, change: Callable[[dict], Any]) -> Any:
    """Apply `change` (mutates the registry dict, returns a result) by read-modify-write.

    The write carries the generation that was read as precondition; when another writer came first,
    the registry is read again and `change` applied again, so `change` must depend only on what it reads.
    Returns change's result; writes nothing when the registry is unchanged.
    """
    uri = registry_uri(samples_uri)
    for attempt in range(_WRITE_ATTEMPTS):
        data, generation = storage.read_versioned(uri)
        try:
            registry = json.loads(data) if data else {}
        except ValueError as err:
            raise InputError(f"{uri}: not valid JSON ({err}); expected the sample registry histoxai writes "
                             "(repair it, or delete it and register the samples again)") from None
        before = json.dumps(registry, sort_keys=True)
        result = change(registry)
        if json.dumps(registry, sort_keys=True) == before:
            return result
        text = json.dumps(registry, indent=1, sort_keys=True)
        if storage.write_if_generation(uri, text.encode(), generation, content_type="application/json"):
            return result
        time.sleep(random.uniform(0.02, 0.1) * (attempt + 1))  # back off from the other writer
    raise RetryLater(f"{uri}: other writers kept changing it during {_WRITE_ATTEMPTS} attempts; try again")


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def active(registry: dict) -> list[str]:
    """The registered samples a run trains on: every one not quarantined, in natural order."""
    return ordered(s for s, entry in registry.get("samples", {}).items()
                   if entry.get("state", ACTIVE) != QUARANTINED)


def newer(generation: str, than: str) -> bool:
    """Whether object generation `generation` came after `than` (generations grow with every write)."""
    return str(generation).isdigit() and str(than).isdigit() and int(generation) > int(than)


def ordered(samples) -> list[str]:
    """Sample ids in natural order (2 before 10)."""
    from histoxai.manifest import natural_key

    return sorted(samples, key=natural_key)


def quarantine(samples_uri: str, sample: str, generation: str, reason: str, by: str) -> None:
    """Record the sample as quarantined (left out of runs) with its reason, unless a newer upload of it
    is registered."""
    when = now()

    def change(registry: dict) -> None:
        samples = registry.setdefault("samples", {})
        entry = samples.get(sample, {})
        if newer(entry.get("ready_generation", ""), generation):
            return
        samples[sample] = {**entry, "ready_generation": generation, "state": QUARANTINED, "reason": reason,
                           "quarantined": when, "by": by, "registered": entry.get("registered", when)}

    update_registry(samples_uri, change)


def samples(samples_uri: str) -> dict[str, dict]:
    """The registered samples and their entries (state, reason, generation, ...), in natural order."""
    data, _ = storage.read_versioned(registry_uri(samples_uri))
    try:
        entries = (json.loads(data) if data else {}).get("samples", {})
    except ValueError as err:
        raise InputError(f"{registry_uri(samples_uri)}: not valid JSON ({err}); expected the sample "
                         "registry histoxai writes") from None
    return {s: entries[s] for s in ordered(entries)}


def set_state(samples_uri: str, sample: str, state: str, reason: str = "", by: str = "operator") -> dict:
    """Quarantine a registered sample (with a reason) or make it active again; returns its entry."""
    when = now()

    def change(registry: dict) -> dict:
        entries = registry.get("samples", {})
        if sample not in entries:
            known = ", ".join(ordered(entries)) or "none"
            raise InputError(f"sample {sample}: not in the registry {registry_uri(samples_uri)} "
                             f"(registered: {known})")
        entry = entries[sample]
        if state == QUARANTINED:
            entry.update(state=QUARANTINED, reason=reason, quarantined=when, by=by)
        else:
            entry.update(state=ACTIVE, released=when, by=by)
            entry.pop("reason", None)
        return dict(entry)

    return update_registry(samples_uri, change)


