"""docs/app.png: the review app's Single Target page on a demo run, shot in headless Chromium."""

from __future__ import annotations

import re
import secrets
import tempfile
import time
from pathlib import Path


def app_screenshot(run: Path, target: Path, width: int = 1600, height: int = 1000) -> None:
    from histoxai.app import auth
    from tests import app_browser

    password = secrets.token_urlsafe(12)
    with tempfile.TemporaryDirectory(prefix="histoxai-docs-") as folder:
        users = Path(folder) / "users.yaml"
        users.write_text(f"demo: '{auth.hash_password(password, rounds=4)}'\n")
        app_browser.ensure_chromium()
        with app_browser.serve_app(str(run), str(users)) as url, \
                app_browser.chromium(width=width, height=height) as driver:
            driver.get(url + "/single-target")
            app_browser.sign_in(driver, "demo", password, timeout=60)
            app_browser.wait_for(driver, lambda d: re.search(r"(\d+) patches pass the filters",
                                                             d.find_element("tag name", "body").text),
                                 90, "the grid's count")
            passing = int(re.search(r"(\d+) patches pass the filters",
                                    driver.find_element("tag name", "body").text).group(1))
            app_browser.wait_tiles(driver, min(24, passing), timeout=90)
            time.sleep(1.0)  # let the last tiles paint
            shot = Path(folder) / "app.png"
            driver.save_screenshot(str(shot))
            target.write_bytes(shot.read_bytes())
