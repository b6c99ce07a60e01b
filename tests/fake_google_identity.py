"""A fake Google identity on 127.0.0.1 that issues ID tokens two ways, as google-auth asks for them:

- the metadata server (what Cloud Run / GCE code uses): ``GET /`` (the ping), the default service
  account's info, and ``.../service-accounts/default/identity?audience=...``;
- an OAuth token endpoint (``POST /token``) for service-account key files whose ``token_uri``
  points here.

Tokens are JWT-shaped (google-auth reads their ``exp`` without checking the signature). The fake
OCR service asks ``accepts(token, audience)`` to decide whether a bearer token is good.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

SERVICE_ACCOUNT = "ocr-caller@stackflows-test.iam.gserviceaccount.com"


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


class FakeGoogleIdentity:
    """Start with ``with FakeGoogleIdentity() as identity:``; ``identity.host`` is ``127.0.0.1:PORT``."""

    def __init__(self, lifetime_s: int = 3600) -> None:
        self.lifetime_s = lifetime_s
        self.issued: list[str] = []
        self.revoked: set[str] = set()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    @property
    def token_uri(self) -> str:
        return f"http://{self.host}/token"

    def __enter__(self) -> FakeGoogleIdentity:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def issue(self, audience: str, email: str) -> str:
        now = int(time.time())
        claims = {"iss": "https://accounts.google.com", "aud": audience, "email": email,
                  "iat": now, "exp": now + self.lifetime_s, "jti": uuid.uuid4().hex}
        token = f"{_b64({'alg': 'RS256', 'typ': 'JWT'})}.{_b64(claims)}.fake-signature"
        with self._lock:
            self.issued.append(token)
        return token

    def revoke_all(self) -> None:
        """Make every token issued so far unacceptable (as if it had expired early)."""
        with self._lock:
            self.revoked.update(self.issued)

    def accepts(self, token: str, audience: str) -> bool:
        with self._lock:
            if token not in self.issued or token in self.revoked:
                return False
        claims = _claims(token)
        return claims["aud"] == audience and claims["exp"] > time.time()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        identity = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _reply(self, status: int, body: str, content_type: str = "text/plain") -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Metadata-Flavor", "Google")
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = parse_qs(url.query)
                if self.headers.get("Metadata-Flavor") != "Google":
                    self._reply(403, "Missing Metadata-Flavor:Google header.")
                elif url.path == "/":
                    self._reply(200, "ok")
                elif url.path == "/computeMetadata/v1/instance/service-accounts/default/":
                    info = {"email": SERVICE_ACCOUNT, "aliases": ["default"], "scopes": []}
                    self._reply(200, json.dumps(info), "application/json")
                elif url.path == "/computeMetadata/v1/instance/service-accounts/default/identity":
                    self._reply(200, identity.issue(query["audience"][0], SERVICE_ACCOUNT))
                else:
                    self._reply(404, "not found")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                form = parse_qs(self.rfile.read(length).decode())
                if urlsplit(self.path).path != "/token" or "assertion" not in form:
                    self._reply(400, json.dumps({"error": "invalid_request"}), "application/json")
                    return
                assertion = _claims(form["assertion"][0])  # signed with the key file's key
                token = identity.issue(assertion["target_audience"], assertion["iss"])
                self._reply(200, json.dumps({"id_token": token}), "application/json")

        return Handler
