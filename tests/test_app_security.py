"""Review app security: limits on password guessing (per name and address, across sessions, processes and
instances), files under the root that are links to outside it, IAP tokens checked on every run."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from histoxai import artifacts
from histoxai.app import auth, limiter
from histoxai.app.settings import ENV, AppSettings
from histoxai.errors import InputError
from tests import app_browser
from tests.app_data import synthesise_run

pytestmark = pytest.mark.slow  # a long file: it starts first (tests/conftest.py)

MAIN = str(Path(auth.__file__).with_name("main.py"))
PASSWORD = "the right password"
POLICY = limiter.Policy()
# the times of POLICY.lock_after failures, each as early as the back-off allows: the last one locks
LOCKING = np.cumsum([0.0] + [POLICY.delay(n) for n in range(1, POLICY.lock_after)]).tolist()


@pytest.fixture
def log_lines():
    """The limiter's log lines, as parsed JSON."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    handler = Collect()
    limiter._log("sign_in_test_start")  # installs the limiter's own stderr handler first
    limiter.LOG.addHandler(handler)
    yield lines
    limiter.LOG.removeHandler(handler)


def _fail(limits, user, client, now) -> limiter.Verdict:
    verdict = limits.attempt(user, client, now=now)
    if verdict.allowed:
        limits.failed(user, client, verdict)
    return verdict


def _lock(limits, user, client=None, end: float | None = None) -> None:
    """POLICY.lock_after failures for user, the last at `end` (default: now)."""
    end = time.time() if end is None else end
    for t in LOCKING:
        assert _fail(limits, user, client, end - LOCKING[-1] + t).allowed


# ---- the limiter, plain Python ----

def test_failures_back_off_then_lock_and_unknown_names_are_answered_alike(log_lines):
    limits = limiter.SignInLimiter()
    answers = {}
    for user in ("alice", "nobody-by-this-name"):
        seen = []
        for t in (0, 0, 0, 0.5, 1, 2.9, 3, 6.9, 7, 15, 31, 63, 123, 124, 1022, 1023):
            verdict = _fail(limits, user, None, t)
            seen.append((t, verdict.allowed, verdict.locked, verdict.retry_after_s,
                         "" if verdict.allowed else verdict.message()))
        answers[user] = seen
    assert answers["alice"] == answers["nobody-by-this-name"]
    allowed = [t for t, ok, *_ in answers["alice"] if ok]
    assert allowed == [0, 0, 0, 1, 3, 7, 15, 31, 63, 123, 1023]  # 10 failures, locked, free again after
    refused = {t: (locked, wait, message) for t, ok, locked, wait, message in answers["alice"] if not ok}
    assert refused[0.5] == (False, 0.5, "Too many failed sign-ins: wait 1 s, then try again.")
    assert refused[6.9][:2] == (False, pytest.approx(0.1))
    assert refused[124] == (True, 899, "Too many failed sign-ins: signing in is locked for 15 min.")
    assert refused[1022][:2] == (True, 1)
    events = [json.loads(line) for line in log_lines]
    failures = [e for e in events if e["event"] == "sign_in_failure" and e["user"] == "alice"]
    assert len(failures) == 11 and [e["failures_user"] for e in failures[:10]] == list(range(1, 11))
    lockouts = [e for e in events if e["event"] == "sign_in_lockout"]
    assert [(e["user"], e["failures"], e["locked_for_s"]) for e in lockouts] == [
        ("alice", 10, 900.0), ("nobody-by-this-name", 10, 900.0)]
    assert sum(e["event"] == "sign_in_refused" for e in events) == 10


def test_a_success_clears_the_users_count_but_not_the_addresses():
    limits = limiter.SignInLimiter()
    for t in (0, 0):
        _fail(limits, "alice", "198.51.100.7", t)
    verdict = limits.attempt("alice", "198.51.100.7", now=1)
    limits.succeeded("alice", "198.51.100.7", verdict)
    assert all(_fail(limits, "alice", "192.0.2.1", 2).allowed for _ in range(3))  # three free ones again
    assert not _fail(limits, "alice", "192.0.2.1", 2).allowed
    # the address: its two failures stay, the success is not counted; one more is free, then it waits
    assert _fail(limits, "bob", "198.51.100.7", 2).allowed
    verdict = limits.attempt("carol", "198.51.100.7", now=2)
    assert not verdict.allowed and verdict.retry_after_s == 1


def test_one_address_spraying_many_names_is_locked(log_lines):
    limits = limiter.SignInLimiter()
    for number, t in enumerate(LOCKING):
        assert _fail(limits, f"user{number}", "203.0.113.9", t).allowed
    verdict = limits.attempt("someone-else", "203.0.113.9", now=LOCKING[-1] + 1)
    assert not verdict.allowed and verdict.locked
    assert limits.attempt("someone-else", "192.0.2.44", now=LOCKING[-1] + 1).allowed
    lockout = [json.loads(line) for line in log_lines if "sign_in_lockout" in line]
    assert [(e["locked"], e["client"]) for e in lockout] == [("client", "203.0.113.9")]


def test_parallel_attempts_get_only_the_free_failures(tmp_path):
    """At one instant: sixteen sessions of one process, then eight processes sharing a local record."""
    limits = limiter.SignInLimiter()
    barrier, verdicts = threading.Barrier(16), []

    def session():
        barrier.wait()
        verdicts.append(limits.attempt("alice", None, now=100.0))

    threads = [threading.Thread(target=session) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(v.allowed for v in verdicts) == POLICY.free_failures
    record = tmp_path / "state" / "users.yaml.sign-in.json"
    script = ("import sys; from histoxai.app import limiter; "
              "v = limiter.SignInLimiter(limiter.FileRecord(sys.argv[1])).attempt('alice', None, now=100.0); "
              "print(int(v.allowed))")
    processes = [subprocess.Popen([sys.executable, "-c", script, str(record)], stdout=subprocess.PIPE,
                                  text=True) for _ in range(8)]
    outputs = [p.communicate(timeout=60)[0].strip() for p in processes]
    assert sorted(outputs) == ["0"] * 5 + ["1"] * 3
    stored = json.loads(record.read_text())
    assert len(stored) == 1 and "alice" not in record.read_text()  # names are kept as digests


def test_instances_share_failures_through_a_gcs_record(gcs_bucket):
    uri = f"{gcs_bucket}/app/users.yaml.sign-in.json"
    instances = [limiter.SignInLimiter(limiter.record_at(uri)) for _ in range(2)]
    verdicts = []

    def guess(instance):
        verdicts.append(instance.attempt("alice", "198.51.100.3", now=50.0))

    threads = [threading.Thread(target=guess, args=(instances[i % 2],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(v.allowed for v in verdicts) == POLICY.free_failures
    _lock(instances[0], "bob", end=2000.0)
    assert instances[1].attempt("bob", None, now=2001.0).locked


def test_an_unreachable_or_damaged_record_falls_back_to_this_process(tmp_path, log_lines):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    limits = limiter.SignInLimiter(limiter.record_at(str(blocker / "state.json")))  # cannot be created
    assert [_fail(limits, "alice", None, 0).allowed for _ in range(4)] == [True, True, True, False]
    assert any(json.loads(line)["event"] == "sign_in_record_unavailable" for line in log_lines)
    damaged = tmp_path / "damaged.json"
    damaged.write_text("[not an object")
    limits = limiter.SignInLimiter(limiter.record_at(str(damaged)))
    assert _fail(limits, "alice", None, 0).allowed and isinstance(json.loads(damaged.read_text()), dict)
    assert any(json.loads(line)["event"] == "sign_in_record_reset" for line in log_lines)


def test_the_client_address_believes_forwarded_for_only_behind_trusted_proxies(tmp_path):
    forwarded = ["198.51.100.1, 203.0.113.5", "192.0.2.9"]
    assert auth.client_address("10.0.0.2", forwarded, 0) == "10.0.0.2"
    assert auth.client_address("10.0.0.2", forwarded, 1) == "192.0.2.9"
    assert auth.client_address("10.0.0.2", forwarded, 2) == "203.0.113.5"
    assert auth.client_address("10.0.0.2", [], 1) == "10.0.0.2"
    assert auth.client_address(None, [], 0) is None
    users = str(tmp_path / "users.yaml")
    settings = AppSettings(run="r", root="r", users_file=users)
    assert settings.trusted_proxies == 0 and settings.sign_in_record == users + ".sign-in.json"
    assert AppSettings(run="r", root="r", users_file=users, sign_in_state="none").sign_in_record == ""
    with pytest.raises(InputError, match="expected a whole number from 0 to 16"):
        AppSettings(run="r", root="r", users_file=users, trusted_proxies=-1)


# ---- the sign-in form ----

@pytest.fixture
def users(tmp_path, monkeypatch):
    for variable in ENV.values():
        monkeypatch.delenv(variable, raising=False)
    made = synthesise_run(tmp_path / "run", patches=20, patch_size=32, map_size=8, samples=2, shard_size=10)
    path = tmp_path / "users" / "users.yaml"
    path.parent.mkdir()
    path.write_text(f"alice: '{auth.hash_password(PASSWORD, rounds=4)}'\n")
    monkeypatch.setenv(ENV["run"], made["run"])
    monkeypatch.setenv(ENV["users_file"], str(path))
    return {"path": path, "run": made["run"], "settings": AppSettings(run=made["run"], root=made["run"],
                                                                      users_file=str(path))}


def _sign_in(name: str, password: str) -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=60).run()
    at.text_input(key="sign_in_name").input(name)
    at.text_input(key="sign_in_password").input(password)
    at.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_a_locked_name_is_refused_alike_whether_or_not_it_has_an_account(users):
    limits = auth.sign_in_limiter(users["settings"])  # the one every session of this process uses
    for name in ("alice", "mallory"):
        _lock(limits, name)
    answers = {name: _sign_in(name, PASSWORD if name == "alice" else "anything")
               for name in ("alice", "mallory")}
    for at in answers.values():
        assert [e.value for e in at.error] == ["Too many failed sign-ins: signing in is locked for 15 min."]
        assert not at.dataframe and not at.sidebar.button
    assert _sign_in("bob", "wrong").error[0].value == auth.WRONG_PASSWORD  # others are not affected


def test_sessions_and_instances_share_one_limit_over_http(users, tmp_path):
    """A lockout recorded by another instance holds on a served app; sessions of the app share one count;
    every failure, refusal and lockout is one JSON line of the server's log, without the password."""
    record = limiter.record_at(str(users["path"]) + ".sign-in.json")
    _lock(limiter.SignInLimiter(record), "alice")  # another instance, same record
    now = time.time()
    for t in LOCKING[:-1]:  # nine failures for a name without an account; the next one is free
        _fail(limiter.SignInLimiter(record), "eve", None, now - LOCKING[-2] - 61 + t)
    log = tmp_path / "server.log"
    with app_browser.serve_app(users["run"], users["path"], log_path=str(log)) as url:
        with app_browser.AppSession(url) as first, app_browser.AppSession(
                url, headers={"X-Forwarded-For": "203.0.113.77"}) as second:  # not believed: no trusted proxy
            first.sign_in("alice", PASSWORD)
            assert first.alerts() == ["Too many failed sign-ins: signing in is locked for 15 min."]
            second.sign_in("eve", "guess one")
            assert second.alerts() == [auth.WRONG_PASSWORD]
            first.sign_in("eve", "guess two")  # another session: the same count, now locked
            assert first.alerts() == ["Too many failed sign-ins: signing in is locked for 15 min."]
    lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
    events = [json.loads(line) for line in lines]
    assert [(e["event"], e["user"]) for e in events] == [
        ("sign_in_refused", "alice"), ("sign_in_failure", "eve"), ("sign_in_lockout", "eve"),
        ("sign_in_refused", "eve")]
    assert all(e["client"] is None for e in events)
    assert not any(word in log.read_text() for word in (PASSWORD, "guess one", "guess two"))


def test_forwarded_for_names_the_client_behind_a_trusted_proxy(users, tmp_path):
    log = tmp_path / "server.log"
    with app_browser.serve_app(users["run"], users["path"], log_path=str(log),
                               args=("--trusted-proxies", "1")) as url, \
            app_browser.AppSession(url, headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.77"}) as session:
        session.sign_in("alice", "wrong")
        assert session.alerts() == [auth.WRONG_PASSWORD]
    failure = next(json.loads(line) for line in log.read_text().splitlines() if "sign_in_failure" in line)
    assert failure["client"] == "203.0.113.77" and failure["failures_client"] == 1


# ---- files under the root that are links to outside it ----

@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A small run with every kind of file the app reads: split, explain (+ trust), evaluate maps, a model
    folder and the phantom truth of samples 1 and 2."""
    folder = tmp_path_factory.mktemp("links") / "run"
    synthesise_run(folder, patches=20, patch_size=32, map_size=8, samples=2, shard_size=10)
    pd.DataFrame([{"model": "mdfa", "target": "MD", "method": "gradcam++", "setting": "layer=top_activation",
                   "score": "increase", "nan_maps": 0.0, "blank_maps": 0.0}]).to_parquet(
        folder / "explain" / artifacts.TRUST_TABLE)
    (folder / "evaluate" / "maps" / "mdfa" / "1").mkdir(parents=True)
    pd.DataFrame({"r2": [0.5]}).to_parquet(folder / "evaluate" / artifacts.EVALUATION_TABLE)
    grid = np.ones((3, 4), np.float32)
    np.savez(folder / "evaluate" / "maps" / "mdfa" / "1" / "MD.npz", measured=grid, predicted=grid,
             residual=grid)
    (folder / "models" / "mdfa").mkdir(parents=True)
    (folder / "models" / "mdfa" / artifacts.MODEL_FILE).write_bytes(b"")
    (folder / "models" / "mdfa" / artifacts.MODEL_CONFIG).write_text("backbone: tiny\n")
    for sample in ("1", "2"):
        truth = folder / "phantom" / sample / "phantom_truth"
        truth.mkdir(parents=True)
        (truth / "targets.json").write_text(json.dumps({"image_shape": [24, 32], "grid": [3, 4]}))
        with h5py.File(truth / "nuclei_labels.h5", "w") as h5:
            h5["labels"] = np.ones((24, 32), np.uint32)
    return folder


# (what the link replaces, relative to the run; the page that reads it)
LINKED = [("explain/maps.parquet", None), ("explain/explain.json", None), ("explain/trust.parquet", None),
          ("split/split.parquet", None), ("models/mdfa/config.yaml", None),
          ("split/shards/part-00000.tfrecord", "page_single_target.py"),
          ("explain/maps/part-00000.f16", "page_single_target.py"),
          ("phantom/2", "page_single_target.py"),
          ("evaluate/maps/mdfa/1/MD.npz", "page_sample_maps.py")]


def _signed_in(run, monkeypatch) -> AppTest:
    """The app on `run`, with alice signed in (no other setting from the environment)."""
    for variable in ENV.values():
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv(ENV["run"], str(run))
    monkeypatch.setenv(ENV["users_yaml"], f"alice: '{auth.hash_password(PASSWORD, rounds=4)}'")
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.session_state[auth.SESSION_USER] = "alice"
    return at


@pytest.mark.parametrize(("linked", "page"), LINKED, ids=[name for name, _ in LINKED])
def test_a_link_out_of_the_root_is_refused_on_the_page_with_one_line(template, tmp_path, monkeypatch, linked,
                                                                    page):
    run, outside = tmp_path / "root" / "run", tmp_path / "outside"
    shutil.copytree(template, run)
    target = outside / linked
    target.parent.mkdir(parents=True)
    shutil.move(run / linked, target)
    (run / linked).symlink_to(target)
    at = _signed_in(run, monkeypatch)
    at.run()
    if page:
        at.switch_page(page).run()
    if linked.startswith("phantom"):
        at.sidebar.toggle(key="w_outlines").set_value(True).run()
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert errors[0].startswith(str(run / linked)) and "outside the app's root" in errors[0], errors
    assert "(a symbolic link leads there)" in errors[0]


def test_a_link_that_stays_inside_the_root_is_followed(template, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(template, run)
    (run / "kept").mkdir()
    shutil.move(run / "explain" / "maps.parquet", run / "kept" / "table")  # not a marker's name
    (run / "explain" / "maps.parquet").symlink_to(run / "kept" / "table")
    at = _signed_in(run, monkeypatch)
    at.run().switch_page("page_single_target.py").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert len(at.main.image) == 20


# ---- IAP: the token is checked on every run ----

def test_an_iap_session_is_signed_out_when_its_token_expires(users, tmp_path):
    from google.auth import jwt

    audience = "/projects/1/locations/r/services/app"
    with app_browser.iap_keys() as (signer, certs):
        env = {ENV["iap_audience"]: audience, ENV["iap_certs_url"]: certs}
        with app_browser.serve_app(users["run"], None, args=("--auth", "iap"), env=env) as url:
            for lifetime in (3, 7, 15):  # the first run must end before the token does (1-2 s on busy cores)
                now = int(time.time())
                claims = {"iss": "https://cloud.google.com/iap", "aud": audience, "email": "r@example.org",
                          "iat": now - 593, "exp": now + lifetime}
                token = jwt.encode(signer, claims).decode()
                with app_browser.AppSession(url, headers={auth.IAP_HEADER: token}) as session:
                    session.run()
                    if any("expired" in alert for alert in session.alerts()):  # before the run ended
                        continue
                    assert "Reload run" in session.texts() and not session.alerts()  # signed in: Main page
                    time.sleep(max(0.0, now + lifetime + 1 - time.time()))
                    session.run()
                    assert "Reload run" not in session.texts()
                    assert len(session.alerts()) == 1 and session.alerts()[0].startswith("Signed out: ")
                    assert "expired" in session.alerts()[0]
                    session.run()
                    assert "Reload run" not in session.texts()
                    break
            else:
                pytest.fail("even a 15-second token expired before the app's first run ended")

