"""A DynamoDB endpoint that accepts BatchWriteItem and discards the items.

It measures the client side of seeding (generation, serialisation, HTTP, retries) at sizes that the
in-memory emulator cannot hold. Every ``defer_every``-th request answers its last items as
unprocessed, as DynamoDB does under load, so the retry path runs too.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class NullDynamoDB:
    def __init__(self, defer_every: int = 20, deferred_items: int = 3):
        self.defer_every = defer_every
        self.deferred_items = deferred_items
        self.requests = 0
        self.items = 0
        self.deferred = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.sink = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> NullDynamoDB:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def answer(self, body: dict) -> dict:
        with self._lock:
            self.requests += 1
            defer = self.requests % self.defer_every == 0
            unprocessed = {}
            for table, writes in body.get("RequestItems", {}).items():
                kept = writes[: -self.deferred_items] if defer and len(writes) > self.deferred_items else writes
                if len(kept) < len(writes):
                    unprocessed[table] = writes[len(kept) :]
                    self.deferred += len(writes) - len(kept)
                self.items += len(kept)
            return {"UnprocessedItems": unprocessed}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # headers and body in one segment: two small writes meet the client's delayed ACK (40 ms each)
    wbufsize = 1 << 16
    disable_nagle_algorithm = True

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        payload = json.dumps(self.server.sink.answer(body)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-amz-json-1.0")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        pass
