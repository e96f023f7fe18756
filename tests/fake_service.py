"""A local HTTP server standing in for a Google API (Vertex AI, a token endpoint, a KFP API): the real
clients send their requests to it over loopback, and tests read what arrived."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class FakeService:
    """A local HTTP server that records requests and answers from `routes`: (method, path regex) ->
    function(match, body, query) -> a JSON-able response (status 200), or (status, JSON-able)."""

    def __init__(self, routes):
        self.requests: list[dict] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                url = urlparse(self.path)
                try:
                    body = json.loads(raw) if raw else {}
                except ValueError:
                    body = {k: v[0] for k, v in parse_qs(raw.decode()).items()}  # OAuth token form
                service.requests.append({"method": self.command, "path": url.path, "body": body,
                                         "query": parse_qs(url.query),
                                         "headers": {k.lower(): v for k, v in self.headers.items()}})
                for (method, pattern), respond in routes.items():
                    match = re.fullmatch(pattern, url.path)
                    if method == self.command and match:
                        answer = respond(match, body, parse_qs(url.query))
                        status, answer = answer if isinstance(answer, tuple) else (200, answer)
                        data = json.dumps(answer).encode()
                        self.send_response(status)
                        break
                else:
                    data = json.dumps({"error": {"code": 404, "message": f"no route {url.path}"}}).encode()
                    self.send_response(404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = _answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        # a short poll: shutdown() waits for the loop's next look, 0.5 s by default (for every close)
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def find(self, method, pattern):
        return [r for r in self.requests if r["method"] == method and re.fullmatch(pattern, r["path"])]
