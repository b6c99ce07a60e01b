"""A fake LightOnOCR service on 127.0.0.1: OpenAI chat completions with a fixed latency and a capacity.

It behaves like one vLLM replica behind Cloud Run, as far as a client can tell:
- at most ``capacity`` pages are worked on at once, each for ``latency_s``; the rest wait in line,
  so its best throughput is ``capacity / latency_s`` pages per second;
- it checks the request is what LightOnOCR expects (one user message holding one image data URI,
  LightOn's sampling settings) and answers 400 otherwise;
- ``require_token(token)`` (optional) checks the bearer token, answering 401 like Cloud Run;
- ``plan`` scripts statuses per page before it succeeds (``{2: [429]}``), ``always`` fails a page
  for good (``{3: 500}``);
- ``stall`` names pages it works on without ever answering (until the fake closes): slower than
  any read timeout, like a cold instance that is still loading the model.

Pages are recognised by a grey marker square that ``marked_page`` draws, so the fake can answer
with text that says which page it saw (``# Page 3``), and tests can check page order.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image, ImageDraw

MARK_STEP = 20  # grey level per page number: survives PDF JPEG compression and rescaling


def marked_page(number: int, size: tuple[int, int] = (850, 1100)) -> Image.Image:
    """A white page with a marker square the fake reads back, and the page number as text."""
    assert 1 <= number <= 12, "the marker encodes pages 1..12"
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    side = size[0] // 8
    draw.rectangle((0, 0, side, side), fill=(255 - MARK_STEP * number,) * 3)
    draw.text((side + 40, 60), f"Scanned page {number}", fill="black", font_size=40)
    return image


def read_marker(image: Image.Image) -> int:
    side = image.width // 8
    patch = image.convert("L").crop((side // 4, side // 4, side * 3 // 4, side * 3 // 4))
    mean = sum(patch.getdata()) / (patch.width * patch.height)
    return round((255 - mean) / MARK_STEP)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # many clients connect at once


class FakeOcrService:
    """``with FakeOcrService(latency_s=0.05, capacity=8) as fake:`` then point the client at ``fake.url``."""

    def __init__(
        self,
        latency_s: float = 0.02,
        capacity: int = 8,
        *,
        require_token: Callable[[str], bool] | None = None,
        plan: dict[int, list[int]] | None = None,
        always: dict[int, int] | None = None,
        retry_after_s: int = 0,
        read_markers: bool = True,
        stall: set[int] | None = None,
    ) -> None:
        self.latency_s = latency_s
        self.capacity = capacity
        self.require_token = require_token
        self.plan = {page: list(statuses) for page, statuses in (plan or {}).items()}
        self.always = dict(always or {})
        self.retry_after_s = retry_after_s
        self.read_markers = read_markers
        self.stall = set(stall or ())
        self._closing = threading.Event()  # releases stalled pages when the fake closes
        self.calls = 0  # every POST, including refused ones
        self.completed = 0  # pages answered 200
        self.unauthorized = 0  # requests refused for a missing or bad token (before the model sees them)
        self.attempts: dict[int, list[tuple[float, int]]] = defaultdict(list)  # page -> (time, status)
        self.max_in_flight = 0
        self.bodies: list[dict] = []
        self._in_flight = 0
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(capacity)
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def capacity_pages_per_s(self) -> float:
        return self.capacity / self.latency_s

    def __enter__(self) -> FakeOcrService:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()

    def _status_for(self, page: int) -> int:
        with self._lock:
            if page in self.always:
                return self.always[page]
            if self.plan.get(page):
                return self.plan[page].pop(0)
        return 200

    def _handle(self, headers: dict[str, str], body: dict) -> tuple[int, dict, dict[str, str]]:
        if self.require_token is not None:
            auth = headers.get("authorization", "")
            if not auth.startswith("Bearer ") or not self.require_token(auth.removeprefix("Bearer ")):
                with self._lock:
                    self.unauthorized += 1
                return 401, {"error": "Unauthorized"}, {"WWW-Authenticate": 'Bearer realm="cloud run"'}
        try:
            (message,) = body["messages"]
            (part,) = message["content"]
            assert message["role"] == "user" and part["type"] == "image_url"
            url = part["image_url"]["url"]
            assert url.startswith("data:image/png;base64,")
            image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
            assert body["temperature"] == 0.2 and body["top_p"] == 0.9 and body["max_tokens"] == 4096
        except (KeyError, ValueError, AssertionError, OSError) as exc:
            return 400, {"error": {"message": f"not a LightOnOCR request: {exc!r}"}}, {}
        page = read_marker(image) if self.read_markers else 0
        status = self._status_for(page)
        with self._lock:
            self.attempts[page].append((time.monotonic(), status))
            self.bodies.append({k: v for k, v in body.items() if k != "messages"})
        if status != 200:
            extra = {"Retry-After": str(self.retry_after_s)} if status in (429, 503) else {}
            return status, {"error": {"message": f"scripted {status}"}}, extra
        if page in self.stall:
            self._closing.wait()
            return 504, {"error": {"message": "stalled page released at close"}}, {}
        with self._slots:  # the GPU: `capacity` pages at a time
            time.sleep(self.latency_s)
        with self._lock:
            self.completed += 1
        text = f"# Page {page}\n\nMarkdown of scanned page {page}."
        reply = {
            "id": f"chatcmpl-{page}",
            "object": "chat.completion",
            "model": body.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        }
        return 200, reply, {}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with fake._lock:
                    fake.calls += 1
                    fake._in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake._in_flight)
                try:
                    if self.path != "/v1/chat/completions":
                        status, reply, extra = 404, {"error": "no such route"}, {}
                    else:
                        status, reply, extra = fake._handle(
                            {k.lower(): v for k, v in self.headers.items()}, json.loads(raw)
                        )
                finally:
                    with fake._lock:
                        fake._in_flight -= 1
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in extra.items():
                    self.send_header(key, value)
                try:
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (a read timeout): nobody to answer

        return Handler
