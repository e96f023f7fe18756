"""Limits on password guessing: back-off and lockout per user name and per client address, shared by every
session of the app's process and, through a small record file (local or gs://), by every instance.

Policy (`Policy`): the first `free_failures` failures within `window_s` cost nothing; after n of them the next
attempt must wait min(2^(n - free_failures), max_delay_s) s; `lock_after` failures within the window lock
the name (or the address) for `lock_s`. An attempt is counted as a failure the moment it is let through
(so parallel sessions cannot all slip past the same check) and taken back when the password is right; a
success clears the user's record. Names and addresses are kept as digests, never as typed, and a name
without an account is counted exactly like one with an account: the answers do not tell them apart.

Every failure, refusal and lockout is logged as one JSON line (logger `histoxai.app.sign_in`, to stderr),
with the name and address but never the password.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable

from histoxai import storage
from histoxai.errors import InputError

LOG = logging.getLogger("histoxai.app.sign_in")
WRITE_TRIES = 20  # concurrent writers of a gs:// record: re-read and re-apply up to this often


@dataclasses.dataclass(frozen=True)
class Policy:
    free_failures: int = 3
    max_delay_s: float = 60.0
    lock_after: int = 10
    window_s: float = 900.0
    lock_s: float = 900.0
    max_keys: int = 10_000  # records kept; the least recently active go first

    def delay(self, failures: int) -> float:
        """Seconds to wait after the latest of `failures` recent failures."""
        if failures < self.free_failures:
            return 0.0
        return min(2.0 ** (failures - self.free_failures), self.max_delay_s)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Whether an attempt may check its password; if not, for how long to wait and whether it is a lockout."""

    allowed: bool
    retry_after_s: float = 0.0
    locked: bool = False
    at: float = 0.0  # when the attempt was counted (taken back on success)

    def message(self) -> str:
        if self.locked:
            minutes = math.ceil(self.retry_after_s / 60)
            return f"Too many failed sign-ins: signing in is locked for {minutes} min."
        return f"Too many failed sign-ins: wait {math.ceil(self.retry_after_s)} s, then try again."


def _digest(kind: str, value: str) -> str:
    return kind + ":" + hashlib.blake2b(value.encode("utf-8", "replace"), digest_size=16,
                                        person=b"histoxai-sign-in").hexdigest()


def _keys(user: str, client: str | None) -> dict[str, str]:
    keys = {"user": _digest("u", user)}
    if client:
        keys["client"] = _digest("c", client)
    return keys


# ---- where the record lives: one dict {key: {"f": [failure times], "lock": until}} ----

class MemoryRecord:
    """The record in this process only."""

    where = "this process"

    def __init__(self):
        self._state: dict = {}
        self._lock = threading.Lock()

    def update(self, change: Callable[[dict], object]):
        with self._lock:
            return change(self._state)


def _parse(data: bytes | None, where: str) -> dict:
    if not data:
        return {}
    try:
        state = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        state = None
    if not isinstance(state, dict):
        _log("sign_in_record_reset", record=where, reason="not a JSON object; started a new one")
        return {}
    return {k: v for k, v in state.items() if isinstance(v, dict) and isinstance(v.get("f", []), list)}


class FileRecord:
    """The record in a local file, read and rewritten whole under an exclusive lock (for processes on one
    host; the lock is a second file, path + '.lock')."""

    def __init__(self, path: str):
        self.where = path
        self._lock = threading.Lock()

    def update(self, change: Callable[[dict], object]):
        import fcntl

        os.makedirs(os.path.dirname(os.path.abspath(self.where)), exist_ok=True)
        with self._lock, open(self.where + ".lock", "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                with open(self.where, "rb") as fh:
                    data = fh.read()
            except FileNotFoundError:
                data = None
            state = _parse(data, self.where)
            before = json.dumps(state)
            result = change(state)
            if json.dumps(state) != before or data is None:
                storage.write_bytes(self.where, json.dumps(state).encode())  # atomic: temporary file, rename
            return result


class GcsRecord:
    """The record in a gs:// object, rewritten only if nobody wrote it since it was read (its generation)."""

    def __init__(self, uri: str):
        self.where = uri
        self._lock = threading.Lock()

    def update(self, change: Callable[[dict], object]):
        with self._lock:
            for _ in range(WRITE_TRIES):
                data, generation = storage.read_versioned(self.where)
                state = _parse(data, self.where)
                before = json.dumps(state)
                result = change(state)
                if json.dumps(state) == before and data is not None:
                    return result  # nothing changed (e.g. a refusal): nothing to write
                if storage.write_if_generation(self.where, json.dumps(state).encode(), generation,
                                               content_type="application/json"):
                    return result
        raise InputError(f"{self.where}: changed by others {WRITE_TRIES} times in a row; could not record "
                         "the sign-in attempt")


def record_at(uri: str):
    """The shared record at uri (gs:// or a local path)."""
    return GcsRecord(uri) if storage.is_gcs(uri) else FileRecord(uri)


# ---- the limiter ----

class SignInLimiter:
    """Back-off and lockout per user name and client address. `record`: a shared record (FileRecord,
    GcsRecord) or None for this process only; when the shared record cannot be reached, this process's own
    record stands in (logged)."""

    def __init__(self, record=None, policy: Policy | None = None, clock: Callable[[], float] = time.time):
        self.record = record
        self.memory = MemoryRecord()
        self.policy = policy or Policy()
        self.clock = clock

    def _update(self, change):
        if self.record is not None:
            try:
                return self.record.update(change)
            except (OSError, InputError) as err:
                _log("sign_in_record_unavailable", record=self.record.where, error=str(err).splitlines()[0],
                     using=self.memory.where)
        return self.memory.update(change)

    def _prune(self, state: dict, now: float) -> None:
        policy = self.policy
        for key in list(state):
            entry = state[key]
            entry["f"] = [t for t in entry.get("f", []) if isinstance(t, (int, float))
                          and t > now - policy.window_s][-policy.lock_after:]
            if not entry["f"] and float(entry.get("lock", 0)) <= now:
                del state[key]
        if len(state) > policy.max_keys:
            last = sorted(state, key=lambda k: max([*state[k]["f"], float(state[k].get("lock", 0))]))
            for key in last[:len(state) - policy.max_keys]:
                del state[key]

    def _wait(self, entry: dict | None, now: float) -> tuple[float, bool]:
        if not entry:
            return 0.0, False
        lock = float(entry.get("lock", 0))
        if lock > now:
            return lock - now, True
        failures = entry["f"]
        if not failures:
            return 0.0, False
        return max(0.0, failures[-1] + self.policy.delay(len(failures)) - now), False

    def attempt(self, user: str, client: str | None = None, now: float | None = None) -> Verdict:
        """Before a password is checked: refused while the name or the address must wait or is locked;
        otherwise let through and counted as a failure until `succeeded` takes it back."""
        now = self.clock() if now is None else now
        keys = _keys(user, client)

        def change(state: dict) -> Verdict:
            self._prune(state, now)
            waits = [self._wait(state.get(key), now) for key in keys.values()]
            wait, locked = max(w for w, _ in waits), any(lock for _, lock in waits)
            if wait > 0:
                return Verdict(False, wait, locked)
            for key in keys.values():
                state.setdefault(key, {"f": [], "lock": 0})["f"].append(now)
            return Verdict(True, at=now)

        verdict = self._update(change)
        if not verdict.allowed:
            _log("sign_in_refused", user=user, client=client, retry_after_s=round(verdict.retry_after_s, 1),
                 locked=verdict.locked)
        return verdict

    def failed(self, user: str, client: str | None, verdict: Verdict) -> None:
        """After a wrong password (or unknown name): the failure stays counted; enough of them lock."""
        keys = _keys(user, client)
        now = verdict.at

        def change(state: dict) -> tuple[dict, list[str]]:
            counts, locked = {}, []
            for kind, key in keys.items():
                entry = state.setdefault(key, {"f": [verdict.at], "lock": 0})
                counts[kind] = len(entry["f"])
                if counts[kind] >= self.policy.lock_after and float(entry.get("lock", 0)) <= now:
                    entry["lock"] = now + self.policy.lock_s
                    locked.append(kind)
            return counts, locked

        counts, locked = self._update(change)
        delay = max(self.policy.delay(n) for n in counts.values())
        _log("sign_in_failure", user=user, client=client,
             **{f"failures_{kind}": n for kind, n in counts.items()}, retry_after_s=delay)
        for kind in locked:
            _log("sign_in_lockout", user=user, client=client, locked=kind, failures=counts[kind],
                 locked_for_s=self.policy.lock_s)

    def succeeded(self, user: str, client: str | None, verdict: Verdict) -> None:
        """After a right password: the user's record is cleared; the address keeps its other failures."""
        keys = _keys(user, client)

        def change(state: dict) -> None:
            state.pop(keys["user"], None)
            entry = state.get(keys.get("client", ""))
            if entry and verdict.at in entry["f"]:
                entry["f"].remove(verdict.at)

        self._update(change)


def _log(event: str, **fields) -> None:
    if not LOG.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        LOG.addHandler(handler)
        LOG.setLevel(logging.INFO)
        LOG.propagate = False
    if isinstance(fields.get("user"), str):
        fields["user"] = fields["user"][:64]
    with contextlib.suppress(TypeError, ValueError):
        LOG.warning(json.dumps({"severity": "WARNING", "event": event, **fields}, ensure_ascii=True))
