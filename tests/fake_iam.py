"""A loopback stand-in for Google's permission checks: the OAuth token endpoint, IAM Credentials'
``generateAccessToken`` (impersonation) and the ``testIamPermissions`` methods of Resource Manager,
IAM, Cloud Run, Cloud Storage and Secret Manager.

Grants are roles of a member on a resource, as ``gcloud ... add-iam-policy-binding`` makes them;
each check answers with the requested permissions the *caller* holds there, the caller being the
account whose impersonated token it presents, as Google answers. ``token_creator_denied`` lists
accounts the checker may not impersonate (403, as without roles/iam.serviceAccountTokenCreator).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

# What the roles our set-up grants contain, as far as the checks ask (Google's lists are longer).
ROLES: dict[str, set[str]] = {
    "roles/batch.jobsEditor": {"batch.jobs.create", "batch.jobs.get", "batch.jobs.delete", "batch.jobs.list", "batch.tasks.list"},
    "roles/iam.serviceAccountUser": {"iam.serviceAccounts.actAs", "iam.serviceAccounts.get"},
    "roles/run.invoker": {"run.routes.invoke", "run.jobs.run"},
    "roles/storage.objectUser": {"storage.objects.create", "storage.objects.get", "storage.objects.list", "storage.objects.delete"},
    "roles/storage.objectViewer": {"storage.objects.get", "storage.objects.list"},
    "roles/batch.agentReporter": {"batch.states.report"},
    "roles/logging.logWriter": {"logging.logEntries.create"},
    "roles/run.developer": {"run.jobs.create", "run.jobs.get", "run.jobs.run", "run.jobs.delete", "run.executions.get"},
    "roles/secretmanager.secretAccessor": {"secretmanager.versions.access"},
}

ROUTES = [  # (method, pattern, resource key template)
    ("POST", r"/v3/projects/(?P<p>[^/:]+):testIamPermissions", "projects/{p}"),
    ("POST", r"/v1/projects/-/serviceAccounts/(?P<a>[^/:]+):testIamPermissions", "serviceAccounts/{a}"),
    ("POST", r"/v2/projects/(?P<p>[^/]+)/locations/(?P<r>[^/]+)/services/(?P<s>[^/:]+):testIamPermissions", "services/{p}/{r}/{s}"),
    ("GET", r"/storage/v1/b/(?P<b>[^/]+)/iam/testPermissions", "buckets/{b}"),
    ("POST", r"/v1/projects/(?P<p>[^/]+)/secrets/(?P<s>[^/:]+):testIamPermissions", "secrets/{p}/{s}"),
]
IMPERSONATE = re.compile(r"/v1/projects/-/serviceAccounts/(?P<a>[^/:]+):generateAccessToken")


@dataclass
class FakeIam:
    url: str = ""
    grants: dict[tuple[str, str], set[str]] = field(default_factory=dict)  # (member, resource) -> roles
    token_creator_denied: set[str] = field(default_factory=set)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, as account)
    existing: set[str] = field(default_factory=set)  # resources that exist; empty: every resource exists

    def grant(self, member: str, resource: str, *roles: str) -> None:
        """``resource`` as: projects/P, serviceAccounts/EMAIL, services/P/REGION/NAME, buckets/B, secrets/P/S."""
        self.grants.setdefault((member, resource), set()).update(roles)

    def held(self, member: str, resource: str) -> set[str]:
        return set().union(*(ROLES[r] for r in self.grants.get((member, resource), ())))


def _handler(fake: FakeIam) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # quiet
            pass

        def _reply(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> dict:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                return json.loads(raw or b"{}")
            except ValueError:  # the OAuth token request is form-encoded
                return {}

        def _caller(self) -> str | None:
            auth = self.headers.get("Authorization", "")
            return auth.removeprefix("Bearer as:") if auth.startswith("Bearer as:") else None

        def _serve(self, method: str) -> None:
            parts = urlsplit(self.path)
            body = self._body() if method == "POST" else {}
            caller = self._caller()
            fake.requests.append((method, parts.path, caller))
            if parts.path == "/token":
                return self._reply(200, {"access_token": "source-token", "expires_in": 3600, "token_type": "Bearer"})
            if method == "POST" and (m := IMPERSONATE.fullmatch(parts.path)):
                if self.headers.get("Authorization") != "Bearer source-token":
                    return self._reply(401, {"error": {"code": 401, "message": "no credentials"}})
                if m["a"] in fake.token_creator_denied:
                    return self._reply(403, {"error": {"code": 403, "message": "Permission 'iam.serviceAccounts.getAccessToken' denied"}})
                return self._reply(200, {"accessToken": f"as:{m['a']}", "expireTime": "2099-01-01T00:00:00Z"})
            for route_method, pattern, key in ROUTES:
                if route_method == method and (m := re.fullmatch(pattern, parts.path)):
                    if caller is None:
                        return self._reply(401, {"error": {"code": 401, "message": "no impersonated token"}})
                    resource = key.format(**m.groupdict())
                    if fake.existing and resource not in fake.existing:
                        return self._reply(404, {"error": {"code": 404, "message": f"{resource} not found"}})
                    asked = parse_qs(parts.query).get("permissions", []) if method == "GET" else body.get("permissions", [])
                    held = [p for p in asked if p in fake.held(caller, resource)]
                    return self._reply(200, {"permissions": held} if held else {})
            return self._reply(404, {"error": {"code": 404, "message": f"no route {method} {parts.path}"}})

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

    return Handler


@contextmanager
def running_fake_iam() -> Iterator[FakeIam]:
    fake = FakeIam()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
