"""Headless Chromium for the review app's end-to-end test and benchmark: installs it when missing, starts the
app on loopback, signs in and waits for the tiles."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")
TILE = '[data-testid="stMain"] [data-testid="stImage"] img'


def ensure_chromium() -> None:
    """Debian's chromium and chromium-driver, installed with apt-get when missing (needs root)."""
    if Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists():
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise RuntimeError(f"{CHROMIUM} or {CHROMEDRIVER} missing and apt-get cannot install them here")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"], check=True, env=env)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve_app(run: str, users: str, *, root: str | None = None, timeout: float = 90.0):
    """`histoxai app` on 127.0.0.1 at a free port; yields its URL and stops it afterwards."""
    port = free_port()
    command = [sys.executable, "-m", "histoxai.cli", "app", "--run", str(run), "--users", str(users),
               "--port", str(port), "--address", "127.0.0.1"]
    if root:
        command += ["--root", str(root)]
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"the app did not start: {log.read().decode(errors='replace')[-2000:]}")
            time.sleep(0.25)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@contextlib.contextmanager
def chromium(width: int = 1600, height: int = 1000):
    """A Selenium driver for headless Chromium with a fresh profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    ensure_chromium()
    with tempfile.TemporaryDirectory(prefix="histoxai-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        try:
            yield driver
        finally:
            driver.quit()


def wait_for(driver, condition, timeout: float = 30.0, what: str = "condition"):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition, message=f"waiting for {what}")


def sign_in(driver, name: str, password: str, timeout: float = 30.0) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    def ready(d):
        fields = d.find_elements(By.CSS_SELECTOR, 'input[aria-label="User name"]')
        return fields[0] if fields and fields[0].is_displayed() and fields[0].is_enabled() else None

    field = wait_for(driver, ready, timeout, "the sign-in form")
    for element, text in ((field, name), (driver.find_element(By.CSS_SELECTOR, 'input[type="password"]'),
                                          password)):
        element.send_keys(Keys.CONTROL, "a")  # replace what an earlier attempt left
        element.send_keys(Keys.DELETE)
        element.send_keys(text)
    driver.find_element(By.XPATH, '//button[.//p[text()="Sign in"]]').click()


def loaded_tiles(driver) -> int:
    """Tiles in the main area whose image has arrived and decoded."""
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])]"
        ".filter(img => img.complete && img.naturalWidth > 0).length;", TILE)


def wait_tiles(driver, count: int, timeout: float = 60.0) -> float:
    """Seconds until `count` tiles are shown."""
    start = time.perf_counter()
    wait_for(driver, lambda d: loaded_tiles(d) >= count, timeout, f"{count} tiles")
    return time.perf_counter() - start
