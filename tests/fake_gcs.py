"""A GCS stand-in on loopback: ``gcp-storage-emulator`` in-process, behind a small proxy.

The emulator speaks the GCS JSON API well enough for the real google-cloud-storage client, but it
ignores generation preconditions: ``ifGenerationMatch=0`` does not stop an overwrite. The proxy
in front of it enforces them the way GCS does (412 when the precondition fails), records every
request the client sends (so tests can check what *our* code asked for), and can inject faults:
transient 503s, lost replies (the request is carried out, the answer replaced by a 503) and flipped
bytes. Our code is never patched: it only sees an HTTP endpoint.

    with gcs_emulator() as gcs:
        os.environ["STORAGE_EMULATOR_HOST"] = gcs.url
"""

from __future__ import annotations

import http.client
import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

from gcp_storage_emulator.server import create_server

from deployments.processes import free_port

_UPLOAD_PATH = re.compile(r"^/upload/storage/v1/b/(?P<bucket>[^/]+)/o$")
_OBJECT_PATH = re.compile(r"^/storage/v1/b/(?P<bucket>[^/]+)/o/(?P<name>[^/]+)$")
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    object_name: str | None = None  # for upload initiations: the name from the metadata body

    def is_upload_start(self) -> bool:
        """A request that creates an object (multipart upload or resumable-session start)."""
        return self.method == "POST" and bool(_UPLOAD_PATH.match(self.path))


@dataclass
class Fault:
    """Answer ``status`` instead of forwarding, ``times`` times, to requests ``matches`` picks.

    ``lose_reply``: forward the request first (GCS does the work, e.g. stores the object) and answer
    ``status`` instead of its reply, as when the reply is lost on the way back.
    """

    matches: Callable[[RecordedRequest], bool]
    times: int
    status: int = 503
    lose_reply: bool = False


@dataclass
class GcsProxy:
    upstream_port: int
    requests: list[RecordedRequest] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    corrupt_downloads: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.faults.clear()
            self.corrupt_downloads = False

    def upload_starts(self) -> list[RecordedRequest]:
        with self.lock:
            return [r for r in self.requests if r.is_upload_start()]

    # -- what GCS would do --------------------------------------------------------------------

    def current_generation(self, bucket: str, name: str) -> int | None:
        status, _, body = self.forward("GET", f"/storage/v1/b/{bucket}/o/{quote(name, safe='')}", {}, b"")
        return int(json.loads(body)["generation"]) if status == 200 else None

    def precondition_failed(self, req: RecordedRequest, bucket: str, name: str | None) -> bool:
        wanted = req.query.get("ifGenerationMatch")
        if not wanted or name is None:
            return False
        current = self.current_generation(bucket, name)
        return (current or 0) != int(wanted[0])

    def forward(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, list, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=120)
        try:
            conn.request(method, path, body=body or None, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()


def _object_name_from_upload(body: bytes, content_type: str) -> str | None:
    """The object name in an upload's metadata: the JSON body (resumable) or its first part (multipart)."""
    text = body[:65536].decode("utf-8", "replace")
    if "multipart" in content_type:
        match = re.search(r"\r\n\r\n(\{.*?\})\r\n--", text, re.S)
        text = match.group(1) if match else "{}"
    try:
        return json.loads(text or "{}").get("name")
    except ValueError:
        return None


def _handler(proxy: GcsProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            req = RecordedRequest(self.command, parts.path, parse_qs(parts.query))
            if self.command == "POST" and _UPLOAD_PATH.match(parts.path):
                req.object_name = _object_name_from_upload(body, self.headers.get("Content-Type", ""))
            with proxy.lock:
                proxy.requests.append(req)
                fault = next((f for f in proxy.faults if f.times > 0 and f.matches(req)), None)
                if fault:
                    fault.times -= 1
            if fault and not fault.lose_reply:
                return self._reply(
                    fault.status, [], json.dumps({"error": {"code": fault.status, "message": "injected"}}).encode()
                )
            target = self._precondition_target(parts.path, req)
            if target and proxy.precondition_failed(req, *target):
                error = {
                    "code": 412,
                    "message": "At least one of the pre-conditions you specified did not hold.",
                    "errors": [{"reason": "conditionNotMet", "message": "Precondition Failed"}],
                }
                return self._reply(412, [], json.dumps({"error": error}).encode())
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
            status, resp_headers, resp_body = proxy.forward(self.command, self.path, headers, body)
            if proxy.corrupt_downloads and req.query.get("alt") == ["media"] and resp_body:
                resp_body = bytes([resp_body[0] ^ 0xFF]) + resp_body[1:]
            if fault:  # lose_reply: the work is done, the answer never arrives
                return self._reply(
                    fault.status, [], json.dumps({"error": {"code": fault.status, "message": "reply lost"}}).encode()
                )
            self._reply(status, resp_headers, resp_body)

        def _precondition_target(self, path: str, req: RecordedRequest) -> tuple[str, str | None] | None:
            """(bucket, object) a precondition applies to: object-creating uploads and deletes."""
            if self.command == "POST" and (match := _UPLOAD_PATH.match(path)):
                return match["bucket"], req.object_name
            if self.command == "DELETE" and (match := _OBJECT_PATH.match(path)):
                return match["bucket"], unquote(match["name"])
            return None

        def _reply(self, status: int, headers: list, body: bytes) -> None:
            self.send_response(status)
            for key, value in headers:
                if key.lower() not in _HOP_HEADERS and key.lower() != "content-length":
                    self.send_header(key, value)
            if not any(k.lower() == "content-type" for k, _ in headers):
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

    return Handler


@dataclass
class GcsEmulator:
    url: str  # what STORAGE_EMULATOR_HOST should be: the proxy
    proxy: GcsProxy
    server: object  # the emulator: .wipe()

    def reset(self) -> None:
        self.server.wipe()
        self.proxy.reset()


@contextmanager
def gcs_emulator() -> Iterator[GcsEmulator]:
    """The emulator on one loopback port and the enforcing proxy on another."""
    upstream_port = free_port()
    server = create_server("127.0.0.1", upstream_port, in_memory=True)
    server.start()
    proxy = GcsProxy(upstream_port)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(proxy))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield GcsEmulator(url=f"http://127.0.0.1:{httpd.server_address[1]}", proxy=proxy, server=server)
    finally:
        httpd.shutdown()
        httpd.server_close()
        server.stop()
