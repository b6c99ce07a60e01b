"""A stand-in for Anthropic's Messages API on 127.0.0.1, serving scripted replies in order.

The real ``anthropic`` SDK talks to it through ``base_url``; the fake records every request (path,
headers, JSON body) so tests can check what the SDK sent: the tool results our code computed, the
``cache_control`` marks, the retries. Replies are queued with :meth:`reply` and :meth:`error`.

    with FakeMessagesAPI() as api:
        api.reply([tool_use("describe_dataset", {})])
        api.error(529, "overloaded_error", "Overloaded")
        api.reply([text("done")], stop_reason="end_turn")
"""

from __future__ import annotations

import itertools
import json
import threading
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_ids = itertools.count(1)


def tool_use(name: str, arguments: dict[str, Any], id: str | None = None) -> dict[str, Any]:
    return {"type": "tool_use", "id": id or f"toolu_fake_{next(_ids)}", "name": name, "input": arguments}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def thinking(value: str) -> dict[str, Any]:
    return {"type": "thinking", "thinking": value, "signature": "fake-signature"}


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    def tool_results(self) -> list[dict[str, Any]]:
        """The tool_result blocks of the last user message."""
        content = self.body["messages"][-1]["content"]
        return [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"] if isinstance(content, list) else []


@dataclass
class _Scripted:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]


class FakeMessagesAPI:
    """A threaded HTTP server answering ``POST /v1/messages`` from a queue of scripted replies."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._queue: deque[_Scripted] = deque()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def reply(
        self,
        content: list[dict[str, Any]],
        *,
        stop_reason: str | None = None,
        input_tokens: int = 1200,
        output_tokens: int = 80,
        cache_read_input_tokens: int = 0,
        cache_creation_input_tokens: int = 0,
        stop_details: dict[str, Any] | None = None,
    ) -> None:
        """Queue a successful message; stop_reason defaults to tool_use when it calls a tool."""
        if stop_reason is None:
            stop_reason = "tool_use" if any(b["type"] == "tool_use" for b in content) else "end_turn"
        body = {
            "id": f"msg_fake_{next(_ids)}",
            "type": "message",
            "role": "assistant",
            "model": "",  # filled with the requested model
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "stop_details": stop_details,
            "usage": {
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "cache_read_input_tokens": cache_read_input_tokens,
                "cache_creation_input_tokens": cache_creation_input_tokens,
            },
        }
        self._queue.append(_Scripted(200, body, {}))

    def error(
        self,
        status: int,
        error_type: str,
        message: str,
        *,
        error_code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Queue an API error in Anthropic's shape (``error.details.error_code`` when given)."""
        error: dict[str, Any] = {"type": error_type, "message": message}
        if error_code:
            error["details"] = {"error_code": error_code}
        body = {"type": "error", "error": error, "request_id": f"req_fake_{next(_ids)}"}
        self._queue.append(_Scripted(status, body, headers or {}))

    def refusal(self, category: str | None = "bio", explanation: str | None = None) -> None:
        """Queue a refusal as the API sends it: 200, ``stop_reason: "refusal"`` and its ``stop_details``."""
        details = {"type": "refusal", "category": category, "explanation": explanation}
        self.reply([], stop_reason="refusal", output_tokens=5, stop_details=details)

    @property
    def pending(self) -> int:
        return len(self._queue)

    def _next(self, body: dict[str, Any]) -> _Scripted:
        with self._lock:
            if not self._queue:
                # 400 with x-should-retry: false so the SDK fails at once instead of backing off.
                return _Scripted(
                    400,
                    {"type": "error", "error": {"type": "invalid_request_error", "message": "fake: no scripted reply left"}},
                    {"x-should-retry": "false"},
                )
            scripted = self._queue.popleft()
        if scripted.status == 200:
            scripted.body = {**scripted.body, "model": body.get("model", "")}
        return scripted

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                raw = self.rfile.read(int(self.headers.get("content-length", 0)))
                body = json.loads(raw or b"{}")
                fake.requests.append(Recorded(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                scripted = fake._next(body)
                payload = json.dumps(scripted.body).encode()
                self.send_response(scripted.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.send_header("request-id", f"req_fake_{next(_ids)}")
                for name, value in scripted.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output quiet

        return Handler

    def __enter__(self) -> FakeMessagesAPI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
