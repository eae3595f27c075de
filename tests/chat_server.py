"""A chat-completions server on 127.0.0.1 for the policy tests: it speaks the OpenAI protocol,
returns canned replies, fails on request, and keeps a log of what it was asked."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CANNED = "[Reasoning]\nStep 1: The bar is green.\nStep 2: Option B is green.\nAnswer: B"


class ChatServer:
    """An OpenAI-compatible ``/v1/chat/completions`` endpoint for tests.

    ``fail``: failure modes for the next requests, one each, in order: ``"500"``, ``"429"``,
    ``"401"``, ``"not_json"``, ``"no_choices"``, ``"empty"`` (every choice's content empty).
    ``fail_if(body)``: answer 500 whenever it returns True. ``max_choices``: return at most this
    many choices. ``reply(body, k)``: the k-th choice's text. ``delay``: seconds per request.
    ``requests``: ``{"path", "headers", "body"}`` of every request received, in order."""

    def __init__(self):
        self.requests: list[dict] = []
        self.fail: list[str] = []
        self.fail_if = None
        self.max_choices: int | None = None
        self.reply = lambda body, k: CANNED
        self.delay = 0.0
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, payload: bytes, headers: dict | None = None):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.loads(raw)
                with server._lock:
                    server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    mode = server.fail.pop(0) if server.fail else None
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    time.sleep(server.delay)
                    if self.path != "/v1/chat/completions":
                        return self._send(404, b'{"error": {"message": "not found"}}')
                    if mode is None and server.fail_if is not None and server.fail_if(body):
                        mode = "500"
                    if mode in ("500", "429", "401"):
                        return self._send(int(mode), b'{"error": {"message": "scripted failure"}}',
                                          {"Retry-After": "0"} if mode == "429" else None)
                    if mode == "not_json":
                        return self._send(200, b"<html>gateway hiccup</html>")
                    if mode == "no_choices":
                        return self._send(200, json.dumps({"id": "x", "object": "chat.completion"}).encode())
                    k = body.get("n", 1)
                    if server.max_choices is not None:
                        k = min(k, server.max_choices)
                    texts = ["" if mode == "empty" else server.reply(body, j) for j in range(k)]
                    choices = [{"index": j, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
                               for j, t in enumerate(texts)]
                    self._send(200, json.dumps({"id": "x", "object": "chat.completion", "choices": choices}).encode())
                finally:
                    with server._lock:
                        server.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
