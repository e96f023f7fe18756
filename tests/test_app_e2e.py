"""Review app end to end: `histoxai app` on loopback driven by Debian's headless Chromium (Selenium): refused
before sign-in, signs in, finds the grid with the expected number of tiles, and takes a screenshot; every
response forbids framing, and Chromium refuses to show the app inside another site's page.

Chromium and its driver are installed with apt-get when missing. HISTOXAI_APP_E2E_RUN drives another run
(e.g. the demo's) instead of the synthetic one; HISTOXAI_APP_SCREENSHOT names a file to copy the
screenshot to (docs/app.png, shown in docs/app.md, is made this way from the demo run).
"""

from __future__ import annotations

import os
import re
import shutil
import time
import urllib.request

import pytest

from histoxai.app import auth
from tests import app_browser
from tests.app_data import synthesise_run

PASSWORD = "e2e password"
PER_PAGE = 24


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("app-e2e")
    run = os.environ.get("HISTOXAI_APP_E2E_RUN") or synthesise_run(
        folder / "run", patches=60, patch_size=96, map_size=24, samples=2, shard_size=25)["run"]
    users = folder / "users.yaml"
    users.write_text(f"alice: '{auth.hash_password(PASSWORD, rounds=4)}'\n")
    app_browser.ensure_chromium()
    with app_browser.serve_app(run, users) as url, app_browser.chromium(width=1600, height=1200) as driver:
        yield {"url": url, "driver": driver, "folder": folder,
               "synthetic": "HISTOXAI_APP_E2E_RUN" not in os.environ}


def _text(driver) -> str:
    return driver.find_element("tag name", "body").text


def test_refused_before_sign_in_then_the_grid(served):
    from selenium.webdriver.common.by import By

    driver = served["driver"]
    driver.get(served["url"] + "/single-target")
    app_browser.wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, 'input[aria-label="User name"]'),
                         60, "the sign-in form")
    time.sleep(1.0)  # anything the server would send unasked has arrived by now
    assert app_browser.loaded_tiles(driver) == 0
    assert not driver.find_elements(By.CSS_SELECTOR, '[data-testid="stSidebarNavLink"]')
    assert "patches pass the filters" not in _text(driver)

    app_browser.sign_in(driver, "alice", "not the password")
    app_browser.wait_for(driver, lambda d: "Unknown user name or wrong password." in _text(d), 30,
                         "the refusal")
    assert app_browser.loaded_tiles(driver) == 0

    app_browser.sign_in(driver, "alice", PASSWORD)
    app_browser.wait_for(driver, lambda d: re.search(r"(\d+) patches pass the filters", _text(d)), 60,
                         "the grid's count")
    passing = int(re.search(r"(\d+) patches pass the filters", _text(driver)).group(1))
    if served["synthetic"]:
        assert passing == 60
    expected = min(PER_PAGE, passing)
    app_browser.wait_tiles(driver, expected, timeout=60)
    time.sleep(0.5)
    assert app_browser.loaded_tiles(driver) == expected
    titles = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stMain"] [data-testid="stImageCaption"]')
    assert titles and titles[0].text.startswith("#0 · y ")
    assert driver.find_elements(By.CSS_SELECTOR, '[data-testid="stSidebarNavLink"]')

    shot = served["folder"] / "app.png"
    driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("HISTOXAI_APP_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["HISTOXAI_APP_SCREENSHOT"])


def _framing_page(url: str):
    """Another origin (a second port) whose page frames the app; yields that page's URL."""
    body = f'<html><body><iframe src="{url}/" width="800" height="600"></iframe></body></html>'.encode()
    return app_browser.serve_bytes(body, "text/html")


def test_every_response_forbids_framing(served):
    from selenium.webdriver.common.by import By

    url, driver = served["url"], served["driver"]
    with urllib.request.urlopen(url + "/") as response:
        page = response.read().decode()
    script = re.search(r'src="\.?/?(static/js/[^"]+\.js)"', page).group(1)
    for path in ("/", "/single-target", "/_stcore/health", "/" + script):
        with urllib.request.urlopen(url + path) as response:
            assert response.headers["X-Frame-Options"] == "DENY", path
            assert "frame-ancestors 'none'" in response.headers.get_all("Content-Security-Policy"), path

    def framed(d):  # where the iframe ended up, once it has loaded something
        d.switch_to.default_content()
        frames = d.find_elements(By.TAG_NAME, "iframe")
        if not frames:
            return None
        d.switch_to.frame(frames[0])
        href = d.execute_script("return location.href")
        d.switch_to.default_content()
        return None if href in ("", "about:blank") else href

    with _framing_page(url) as outer:
        driver.get(outer)
        shown = app_browser.wait_for(driver, framed, 30, "the iframe to load")
        assert shown.startswith("chrome-error://"), shown  # refused, not the app
