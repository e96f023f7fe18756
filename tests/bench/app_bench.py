"""Review app benchmark: time to the first grid of 24 tiles on a run with 10,000 patches.

The run is synthetic (tests/app_data.py): 10,000 test patches of 360 px (JPEG records in shards of
1,000) and one 90 x 90 map each, written with the explain step's own store. Two measures:
- server: the Single Target page's script in Streamlit's AppTest, with every cache empty (the run's
  tables, the page's patches and maps, the display range), then again warm, then the next page;
- browser: `histoxai app` on loopback and headless Chromium (installed with apt-get when missing),
  signed in on the Main page (which loads the run's tables), from the click on "Single Target" until
  24 tiles are decoded and shown; a fresh server for each cold repeat, then warm repeats.
Then password guessing: ATTACK_SESSIONS websocket sessions (tests/app_browser.AppSession, Streamlit's own
protocol, no browser) guess one user's password (bcrypt cost 12, the default of `--hash-password`) in
parallel against `histoxai app`: checked guesses per second, and how many failures it takes until the app
locks the user out (or that it never does within ATTACK_MAX_S).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import time
from pathlib import Path

REPEATS = 3
TILES = 24
ATTACK_SESSIONS = 16
ATTACK_MAX_S = 240.0  # give up waiting for a lockout after this long
ATTACK_AFTER_LOCK_S = 10.0  # keep guessing this long after the lockout: nothing more may be checked
WRONG = "Unknown user name or wrong password."


def _server_times(run: str, users: str) -> dict:
    from streamlit.testing.v1 import AppTest

    from histoxai.app import auth, cache
    from histoxai.app.settings import ENV

    os.environ.update({ENV["run"]: run, ENV["users_file"]: users})
    main = str(Path(auth.__file__).with_name("main.py"))
    cold = []
    for _ in range(REPEATS):
        cache.clear()
        at = AppTest.from_file(main, default_timeout=120)
        at.session_state[auth.SESSION_USER] = "bench"
        at.run()  # the Main page: sign-in state and the navigation, tables not yet loaded
        cache.clear()
        at.switch_page("page_single_target.py")
        start = time.perf_counter()
        at.run()
        cold.append(time.perf_counter() - start)
        assert len(at.main.image) == TILES, f"expected {TILES} tiles, got {len(at.main.image)}"
    start = time.perf_counter()
    at.run()
    warm = time.perf_counter() - start
    at.pagination[0].set_value(2)
    start = time.perf_counter()
    at.run()
    next_page = time.perf_counter() - start
    return {"cold_s": cold, "cold_median_s": statistics.median(cold), "warm_s": warm,
            "next_page_s": next_page}


def _browser_times(run: str, users: Path, password: str) -> dict:
    from selenium.webdriver.common.by import By

    from tests import app_browser

    def click(driver, title: str) -> None:
        driver.find_element(By.XPATH, f'//a[@data-testid="stSidebarNavLink"][contains(., "{title}")]').click()

    cold, warm = [], []
    for repeat in range(REPEATS):
        with app_browser.serve_app(run, users) as url, app_browser.chromium() as driver:
            driver.get(url)
            app_browser.sign_in(driver, "bench", password)
            app_browser.wait_for(driver, lambda d: d.find_elements(By.XPATH, '//*[text()="Reload run"]'), 120,
                                 "the Main page")
            time.sleep(1.0)
            click(driver, "Single Target")
            cold.append(app_browser.wait_tiles(driver, TILES, timeout=120))
            if repeat == 0:
                for _ in range(REPEATS):
                    click(driver, "Main")
                    app_browser.wait_for(driver, lambda d: app_browser.loaded_tiles(d) == 0, 30, "Main")
                    time.sleep(1.0)
                    click(driver, "Single Target")
                    warm.append(app_browser.wait_tiles(driver, TILES, timeout=120))
    return {"cold_s": cold, "cold_median_s": statistics.median(cold), "cold_max_s": max(cold),
            "warm_s": warm, "warm_median_s": statistics.median(warm)}


def sign_in_attack(run: str, work: Path, sessions: int = ATTACK_SESSIONS,
                   max_s: float = ATTACK_MAX_S) -> dict:
    """`sessions` parallel websocket sessions guess user "victim"'s password as fast as the app answers."""
    import threading

    from histoxai.app import auth
    from tests import app_browser

    users = Path(work) / "attack-users.yaml"
    users.write_text(f"victim: '{auth.hash_password('the real password')}'\n")
    state = Path(str(users) + ".sign-in.json")
    state.unlink(missing_ok=True)
    lock = threading.Lock()
    checked, refused, other = [], [], []  # answer times (s since the start); other: unexpected alerts
    locked_at: list[float] = []
    stop = threading.Event()

    def guess(number: int, url: str, start: float) -> None:
        with app_browser.AppSession(url, timeout=120) as session:
            session.run()
            attempt = 0
            while not stop.is_set():
                attempt += 1
                session.sign_in("victim", f"guess {number}-{attempt}")
                now, alerts = time.perf_counter() - start, session.alerts()
                with lock:
                    if WRONG in alerts:
                        checked.append(now)
                    elif any("locked" in a for a in alerts):
                        refused.append(now)
                        if not locked_at:
                            locked_at.append(now)
                    elif any("Too many failed sign-ins" in a for a in alerts):
                        refused.append(now)
                    else:
                        other.append(alerts)

    log = Path(work) / "attack-server.log"
    with app_browser.serve_app(run, users, log_path=str(log)) as url:
        start = time.perf_counter()
        threads = [threading.Thread(target=guess, args=(i, url, start), daemon=True) for i in range(sessions)]
        for thread in threads:
            thread.start()
        while time.perf_counter() - start < max_s and not (
                locked_at and time.perf_counter() - start > locked_at[0] + ATTACK_AFTER_LOCK_S):
            time.sleep(0.2)
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
        elapsed = time.perf_counter() - start
    # the server's own log says which failures came before the lockout (the answers race each other)
    events = [json.loads(line)["event"] for line in log.read_text().splitlines() if line.startswith("{")]
    lockout = events.index("sign_in_lockout") if "sign_in_lockout" in events else len(events)
    before_lock = events[:lockout].count("sign_in_failure") if locked_at else len(checked)
    until = locked_at[0] if locked_at else elapsed
    return {"sessions": sessions, "bcrypt_cost": 12, "attack_s": elapsed,
            "guesses_checked": len(checked), "guesses_refused": len(refused),
            "unexpected_answers": len(other),
            "guesses_per_s": before_lock / until if until else 0.0,
            "locked_out": bool(locked_at), "seconds_until_lockout": locked_at[0] if locked_at else None,
            "failures_until_lockout": before_lock if locked_at else None,
            "guesses_checked_after_lockout": events[lockout:].count("sign_in_failure") if locked_at else None,
            "answers_per_s": (len(checked) + len(refused)) / elapsed}


def bench_app(work: Path) -> dict:
    from histoxai.app import auth
    from tests import app_browser
    from tests.app_data import synthesise_run

    work = Path(work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    start = time.perf_counter()
    made = synthesise_run(work / "run", patches=10_000, patch_size=360, map_size=90, encoding="jpeg")
    password = "bench password"
    users = work / "users.yaml"
    users.write_text(f"bench: '{auth.hash_password(password, rounds=4)}'\n")
    results = {"patches": made["patches"], "maps": made["maps"], "patch_px": 360, "map_px": 90,
               "encoding": "jpeg", "tiles": TILES, "synthesis_s": time.perf_counter() - start,
               "load_average_before": os.getloadavg()}
    try:
        results["server"] = _server_times(made["run"], str(users))
        try:
            app_browser.ensure_chromium()
        except (RuntimeError, OSError) as err:  # no root or no apt here: the server figures stand alone
            results["browser"] = f"skipped: {err}"
        else:
            results["browser"] = _browser_times(made["run"], users, password)
        small = synthesise_run(work / "attack-run", patches=20, patch_size=32, map_size=8, samples=1,
                               shard_size=10)
        results["sign_in_attack"] = sign_in_attack(small["run"], work)
    finally:
        results["load_average_after"] = os.getloadavg()
        shutil.rmtree(work / "run", ignore_errors=True)  # about 1.1 GB
    return results
