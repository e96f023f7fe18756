"""The review app's web server (`histoxai app` runs it): Streamlit's own ASGI app around main.py, with headers
that forbid other sites to frame it (clickjacking) on every HTTP response."""

from pathlib import Path

import streamlit as st
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware

MAIN_SCRIPT = Path(__file__).with_name("main.py")
FRAMING_HEADERS = {"X-Frame-Options": "DENY", "Content-Security-Policy": "frame-ancestors 'none'"}


class ForbidFraming:
    """ASGI middleware: FRAMING_HEADERS on every HTTP response (a policy already there is kept beside ours;
    browsers apply both). Websocket traffic passes untouched."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Frame-Options"] = FRAMING_HEADERS["X-Frame-Options"]
                headers.append("Content-Security-Policy", FRAMING_HEADERS["Content-Security-Policy"])
            await send(message)

        await self.app(scope, receive, send_with_headers)


app = st.App(MAIN_SCRIPT, middleware=[Middleware(ForbidFraming)])
