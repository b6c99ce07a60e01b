"""The local stack's Prefect client (benchmarks, end-to-end tests) retries a busy server's 503/429,
as Prefect's own client does: a POST that meets "database is locked" once is not a failed run."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from deployments.local_stack import RetryBusyServer


@pytest.fixture
def busy_server() -> Iterator[tuple[str, list[str]]]:
    """Answers 503 (Retry-After: 0), then 429, then 200 to each path; records what it was sent."""
    seen: list[str] = []
    answers: dict[str, list[int]] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            seen.append(body)
            status = answers.setdefault(self.path, [503, 429, 200]).pop(0)
            self.send_response(status)
            self.send_header("Retry-After", "0")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", seen
    server.shutdown()


def test_a_busy_answer_is_retried_with_the_same_request(busy_server: tuple[str, list[str]]) -> None:
    url, seen = busy_server
    with httpx.Client(base_url=url, transport=RetryBusyServer()) as client:
        response = client.post("/flow_runs/", json={"name": "a"})
    assert response.status_code == 200
    assert seen == ['{"name":"a"}'] * 3


def test_a_server_busy_past_the_attempts_gives_its_answer(
    busy_server: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, seen = busy_server
    monkeypatch.setattr(RetryBusyServer, "ATTEMPTS", 2)
    with httpx.Client(base_url=url, transport=RetryBusyServer()) as client:
        assert client.post("/x", json={}).status_code == 429
    assert len(seen) == 2
