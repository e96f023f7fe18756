"""The review app from outside, for its end-to-end tests and benchmark: starts it on loopback, drives it with
headless Chromium (installed when missing) or with a plain websocket client speaking Streamlit's protocol."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.loopback import free_port

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


@contextlib.contextmanager
def serve_app(run: str, users: str | None, *, root: str | None = None, timeout: float = 90.0,
              args: tuple[str, ...] = (), env: dict[str, str] | None = None, log_path: str | None = None):
    """`histoxai app` on 127.0.0.1 at a free port (more options in args, variables in env, its output in
    log_path when given); yields its URL and stops it afterwards."""
    port = free_port()
    command = [sys.executable, "-m", "histoxai.cli", "app", "--run", str(run), "--port", str(port),
               "--address", "127.0.0.1", *args]
    if users:
        command += ["--users", str(users)]
    if root:
        command += ["--root", str(root)]
    log = open(log_path, "w+b") if log_path else tempfile.TemporaryFile()
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, **(env or {})})
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


class AppSession:
    """One session of a served app over its websocket, without a browser: runs the script and submits widget
    values as Streamlit's frontend does (a few sessions per test, many in the sign-in benchmark)."""

    def __init__(self, url: str, headers: dict[str, str] | None = None, timeout: float = 60.0):
        import websocket

        self.socket = websocket.create_connection(
            "ws" + url[len("http"):] + "/_stcore/stream", subprotocols=["streamlit"], timeout=timeout,
            header=[f"{name}: {value}" for name, value in (headers or {}).items()])
        self.elements: list = []

    def close(self) -> None:
        self.socket.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run(self, widgets=()) -> list:
        """Run the script (with these WidgetState protos) until it finishes; the elements it drew."""
        from streamlit.proto.BackMsg_pb2 import BackMsg
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        message = BackMsg()
        message.rerun_script.query_string = ""
        message.rerun_script.widget_states.widgets.extend(widgets)
        self.socket.send_binary(message.SerializeToString())
        elements = []
        while True:
            reply = ForwardMsg()
            reply.ParseFromString(self.socket.recv())
            kind = reply.WhichOneof("type")
            if kind == "delta" and reply.delta.WhichOneof("type") == "new_element":
                elements.append(reply.delta.new_element)
            elif kind == "script_finished":
                if reply.script_finished == ForwardMsg.FINISHED_EARLY_FOR_RERUN:
                    elements = []  # st.rerun(): the next run follows on its own
                    continue
                break
        self.elements = elements
        return elements

    def widget(self, kind: str, label: str):
        for element in self.elements:
            if element.WhichOneof("type") == kind and getattr(element, kind).label == label:
                return getattr(element, kind)
        raise LookupError(f"no {kind} labelled {label!r} on the page")

    def sign_in(self, name: str, password: str) -> list:
        """Submit the sign-in form (run the script first if it has not drawn it yet)."""
        from streamlit.proto.WidgetStates_pb2 import WidgetState

        if not any(e.WhichOneof("type") == "text_input" for e in self.elements):
            self.run()
        states = [WidgetState(id=self.widget("text_input", "User name").id, string_value=name),
                  WidgetState(id=self.widget("text_input", "Password").id, string_value=password),
                  WidgetState(id=self.widget("button", "Sign in").id, trigger_value=True)]
        return self.run(states)

    def alerts(self) -> list[str]:
        """The bodies of st.error / st.warning / st.info boxes of the last run."""
        return [e.alert.body for e in self.elements if e.WhichOneof("type") == "alert"]

    def texts(self) -> list[str]:
        """Every text the last run drew (titles, markdown, captions, alerts, widget labels)."""
        out = []
        for element in self.elements:
            kind = element.WhichOneof("type")
            value = getattr(element, kind)
            for field in ("body", "label", "text"):
                if hasattr(value, field) and isinstance(getattr(value, field), str) and getattr(value, field):
                    out.append(getattr(value, field))
        return out


@contextlib.contextmanager
def serve_bytes(body: bytes, content_type: str):
    """A loopback HTTP server answering every GET with `body` (another origin for the app's tests: an
    IAP public-key endpoint, a page that frames the app); yields its base URL."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    # A thread per connection: Chromium holds a speculative connection open without sending a request,
    # and a one-thread server waited for it (about 60 s) before it could shut down.
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.block_on_close = False
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()  # quick shutdown()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def iap_keys(key_id: str = "k1"):
    """A fresh ES256 key as IAP signs with: yields (signer, URL of the public-key document IAP
    publishes), served on loopback."""
    import json

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from google.auth import crypt

    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    with serve_bytes(json.dumps({key_id: public}).encode(), "application/json") as base:
        yield crypt.ES256Signer.from_string(pem, key_id=key_id), f"{base}/public_key"
