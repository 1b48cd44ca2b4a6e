"""A fault-injecting HTTP proxy in front of the AWS emulator.

moto never throttles and tests never replace boto3 with mocks, so faults are injected where real
DynamoDB produces them: in the HTTP answers. Point boto3 at :attr:`FaultProxy.url` (set
``AWS_ENDPOINT_URL``) and it talks to the emulator through the proxy, which forwards every request
unchanged except the ones it was told to fail::

    with FaultProxy() as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        proxy.throttle("DynamoDB_20120810.Query", times=2)
        ...  # botocore sees two real throttling errors, retries, then succeeds
        assert proxy.injected[THROTTLE] == 2

Requests are forwarded as they came, Host header and SigV4 signature included (the signature no
longer matches a rewritten body, but the emulator does not check signatures).
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import uuid
import zlib
from collections import Counter
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

THROTTLE = "throttle"
PARTIAL_BATCH_WRITE = "partial_batch_write"
CAPACITY_REFUSAL = "capacity_refusal"
ACTION_FAILURE = "action_failure"
BATCH_WRITE_TARGET = "DynamoDB_20120810.BatchWriteItem"

THROTTLING_ERROR_TYPE = "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException"
THROTTLING_MESSAGE = (
    "The level of configured provisioned throughput for the table was exceeded. "
    "Consider increasing your provisioning level with the UpdateTable API."
)
_DYNAMODB_CONTENT_TYPE = "application/x-amz-json-1.0"
# headers about one connection, not the message: never forwarded (RFC 9110, section 7.6.1)
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
     "transfer-encoding", "upgrade", "proxy-connection"}
)  # fmt: skip
# recomputed for every answer the proxy sends
_REWRITTEN = _HOP_BY_HOP | {"content-length", "x-amz-crc32"}


@dataclass(frozen=True)
class _Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


class FaultProxy:
    """A threaded HTTP proxy on 127.0.0.1 that forwards to the emulator and fails requests on demand."""

    def __init__(self, upstream_url: str | None = None):
        upstream_url = upstream_url or os.environ.get("AWS_ENDPOINT_URL")
        if not upstream_url:
            raise RuntimeError("FaultProxy needs the emulator's URL: pass it or set AWS_ENDPOINT_URL")
        upstream = urlsplit(upstream_url)
        if upstream.scheme != "http" or not upstream.hostname:
            raise ValueError(f"FaultProxy forwards to a plain http:// emulator, not {upstream_url!r}")
        self.upstream_url = upstream_url
        self._upstream = (upstream.hostname, upstream.port or 80)
        self._lock = threading.Lock()
        self._throttles_left: Counter[str] = Counter()  # X-Amz-Target -> requests still to throttle
        self._half_throttled: set[str] = set()  # X-Amz-Targets whose first attempts are all throttled
        self._throttled_calls: set[str] = set()  # calls (botocore invocation ids) throttled once already
        self._partial_writes_left = 0
        self._partial_keep = 0
        self._refused_capacity: dict[tuple[str, str], str] = {}  # (instance type, market) -> EC2 error code
        self._failing_actions: dict[str, list[tuple[str, int]]] = {}  # query-protocol Action -> (code, status)s
        self.injected: Counter[str] = Counter()  # faults injected, by kind (THROTTLE, PARTIAL_BATCH_WRITE)
        self.throttled: Counter[str] = Counter()  # throttling errors sent, by X-Amz-Target
        self.deferred_items = 0  # items answered as unprocessed instead of being written
        self.requests: Counter[str] = Counter()  # requests received, by X-Amz-Target ("" for none)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------ configuration

    def throttle(self, target: str, times: int) -> None:
        """Answers the next ``times`` requests for ``target`` (an ``X-Amz-Target``) with throttling."""
        with self._lock:
            self._throttles_left[target] += times

    def throttle_half(self, *targets: str) -> None:
        """From now on, half of all requests for ``targets`` are throttled: each call's first attempt is
        answered with throttling and its retry is forwarded. Half of the requests, deterministically, and never
        one call throttled twice in a row, however the client's threads interleave. A call is told apart by
        botocore's ``amz-sdk-invocation-id`` header, which its retries repeat (or by its body without one)."""
        with self._lock:
            self._half_throttled.update(targets)

    def partial_batch_writes(self, times: int, keep: int) -> None:
        """The next ``times`` BatchWriteItem requests with more than ``keep`` items write only the
        first ``keep``; the others come back in ``UnprocessedItems``, as DynamoDB does under load."""
        if keep < 0:
            raise ValueError(f"keep must be 0 or more, got {keep}")
        with self._lock:
            self._partial_writes_left = times
            self._partial_keep = keep

    def refuse_capacity(self, instance_type: str, market: str = "spot", code: str = "InsufficientInstanceCapacity"):
        """EC2 RunInstances for ``instance_type`` in ``market`` (spot or on-demand) is answered with ``code``,
        as EC2 answers when a zone has no capacity, until :meth:`restore_capacity`."""
        with self._lock:
            self._refused_capacity[(instance_type, market)] = code

    def fail_action(self, action: str, code: str, times: int = 1, status: int = 403) -> None:
        """The next ``times`` requests of a query-protocol ``action`` (EC2's ``DescribeSpotPriceHistory``, ...)
        are answered with the error ``code``, without reaching the emulator."""
        with self._lock:
            self._failing_actions.setdefault(action, []).extend([(code, status)] * times)

    def restore_capacity(self) -> None:
        with self._lock:
            self._refused_capacity.clear()

    def pending_faults(self) -> dict[str, int]:
        """Faults configured but not injected yet, by kind."""
        with self._lock:
            return {THROTTLE: sum(self._throttles_left.values()), PARTIAL_BATCH_WRITE: self._partial_writes_left}

    # -------------------------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the proxy is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FaultProxy:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fault_proxy = self
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------------------- answering

    def answer(self, method: str, path: str, headers: Message, body: bytes) -> _Answer:
        target = headers.get("X-Amz-Target", "")
        with self._lock:
            self.requests[target] += 1
        if self._take_throttle(target) or self._take_half_throttle(target, headers, body):
            return _throttling_answer()
        if not target and b"Action=" in body:
            failure = self._take_action_failure(body)
            if failure is not None:
                return failure
        if not target and b"Action=RunInstances" in body:
            refusal = self._capacity_refusal(body)
            if refusal is not None:
                return refusal
        if target == BATCH_WRITE_TARGET:
            keep = self._take_partial_write(body)
            if keep is not None:
                return self._partial_batch_write(method, path, headers, body, keep)
        return self._forward(method, path, headers, body)

    def _capacity_refusal(self, body: bytes) -> _Answer | None:
        form = parse_qs(body.decode())
        instance_type = form.get("InstanceType", [""])[0]
        market = "spot" if form.get("InstanceMarketOptions.MarketType", [""])[0] == "spot" else "on-demand"
        with self._lock:
            code = self._refused_capacity.get((instance_type, market))
            if code is None:
                return None
            self.injected[CAPACITY_REFUSAL] += 1
            self.requests[f"RunInstances {instance_type} {market} refused"] += 1
        # sent as 400 so that the refusal is seen once, not retried
        return _ec2_error(400, code, f"There is no {market} capacity for {instance_type} in the requested zone.")

    def _take_action_failure(self, body: bytes) -> _Answer | None:
        action = parse_qs(body.decode(errors="replace")).get("Action", [""])[0]
        with self._lock:
            queued = self._failing_actions.get(action)
            if not queued:
                return None
            code, status = queued.pop(0)
            self.injected[ACTION_FAILURE] += 1
            self.requests[f"{action} failed with {code}"] += 1
        return _ec2_error(status, code, f"{action} was refused ({code}).")

    def _take_throttle(self, target: str) -> bool:
        with self._lock:
            if self._throttles_left[target] <= 0:
                return False
            self._throttles_left[target] -= 1
            self.injected[THROTTLE] += 1
            self.throttled[target] += 1
            return True

    def _take_half_throttle(self, target: str, headers: Message, body: bytes) -> bool:
        call = headers.get("amz-sdk-invocation-id") or f"{target} {zlib.crc32(body)}"
        with self._lock:
            if target not in self._half_throttled or call in self._throttled_calls:
                return False
            self._throttled_calls.add(call)
            self.injected[THROTTLE] += 1
            self.throttled[target] += 1
            return True

    def _take_partial_write(self, body: bytes) -> int | None:
        """How many items of this BatchWriteItem to write, or None to forward it whole."""
        with self._lock:
            if self._partial_writes_left <= 0:
                return None
            keep = self._partial_keep
        if _batch_requests_count(body) <= keep:
            return None  # nothing to hold back; a fault here would be invisible
        with self._lock:
            if self._partial_writes_left <= 0:
                return None
            self._partial_writes_left -= 1
            return keep

    def _partial_batch_write(self, method: str, path: str, headers: Message, body: bytes, keep: int) -> _Answer:
        request = json.loads(body)
        writes = [(table, write) for table, table_writes in request["RequestItems"].items() for write in table_writes]
        kept, deferred = writes[:keep], writes[keep:]
        if kept:
            forwarded = json.dumps({**request, "RequestItems": _by_table(kept)}).encode()
            upstream = self._forward(method, path, headers, forwarded)
            if upstream.status != 200:
                return upstream  # the emulator's own error is the answer; nothing was held back
            response = json.loads(upstream.body)
            response_headers = upstream.headers
        else:
            # DynamoDB may write nothing at all; it answers 200 with every item unprocessed
            response = {"UnprocessedItems": {}}
            response_headers = [("Content-Type", _DYNAMODB_CONTENT_TYPE), ("x-amzn-RequestId", _request_id())]
        unprocessed = response.setdefault("UnprocessedItems", {})
        for table, table_writes in _by_table(deferred).items():
            unprocessed.setdefault(table, []).extend(table_writes)
        with self._lock:
            self.injected[PARTIAL_BATCH_WRITE] += 1
            self.deferred_items += len(deferred)
        return _json_answer(200, response_headers, json.dumps(response).encode())

    def _forward(self, method: str, path: str, headers: Message, body: bytes) -> _Answer:
        connection = http.client.HTTPConnection(*self._upstream, timeout=60)
        try:
            connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for name, value in headers.items():
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                    connection.putheader(name, value)
            if body or method in ("POST", "PUT", "PATCH"):
                connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body or None)
            response = connection.getresponse()
            return _Answer(response.status, response.getheaders(), response.read())
        finally:
            connection.close()


def _batch_requests_count(body: bytes) -> int:
    try:
        request_items = json.loads(body).get("RequestItems", {})
    except (ValueError, AttributeError):
        return 0
    return sum(len(writes) for writes in request_items.values())


def _by_table(writes: list[tuple[str, dict]]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for table, write in writes:
        grouped.setdefault(table, []).append(write)
    return grouped


def _ec2_error(status: int, code: str, message: str) -> _Answer:
    """EC2's query-protocol error document."""
    document = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>'
        f"{code}</Code><Message>{message}</Message></Error></Errors>"
        f"<RequestID>{_request_id()}</RequestID></Response>"
    ).encode()
    return _Answer(status, [("Content-Type", "text/xml")], document)


def _request_id() -> str:
    return uuid.uuid4().hex.upper()


def _json_answer(status: int, headers: list[tuple[str, str]], body: bytes) -> _Answer:
    kept = [(name, value) for name, value in headers if name.lower() not in _REWRITTEN]
    # botocore checks DynamoDB bodies against this checksum when it is present
    return _Answer(status, [*kept, ("x-amz-crc32", str(zlib.crc32(body) & 0xFFFFFFFF))], body)


def _throttling_answer() -> _Answer:
    body = json.dumps({"__type": THROTTLING_ERROR_TYPE, "message": THROTTLING_MESSAGE}).encode()
    headers = [("Content-Type", _DYNAMODB_CONTENT_TYPE), ("x-amzn-RequestId", _request_id())]
    return _json_answer(400, headers, body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fault_proxy: FaultProxy


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as botocore's connection pool expects
    timeout = 60  # an idle keep-alive connection ends its thread after this
    server: _Server

    def _relay(self) -> None:
        body = self._read_body()
        answer = self.server.fault_proxy.answer(self.command, self.path, self.headers, body)
        self.send_response_only(answer.status)
        for name, value in answer.headers:
            if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                self.send_header(name, value)
        if self.command == "HEAD":
            length = next((v for n, v in answer.headers if n.lower() == "content-length"), str(len(answer.body)))
            self.send_header("Content-Length", length)
            self.end_headers()
            return
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        self.wfile.write(answer.body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _relay

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _read_chunked(self) -> bytes:
        chunks = []
        while True:
            size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline()  # the CRLF after each chunk

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's signature
        pass  # a test's output is no place for an access log
