"""A small Google Cloud Batch v1 REST API on 127.0.0.1 that really runs each job's container command.

It speaks the slice of the API that ``CloudBatchRunner`` uses through the real client
(``transport="rest"``): create (``?jobId=``; 409 if the id exists), get, list, ``:cancel`` and
delete (both answer an Operation with ``done: true``). A job's "container" is a local process:
``commands`` run with a ``python`` on PATH that stands for the image (the venv's interpreter unless
the test registers another one for that image URI), with the task's environment variables set.
The job's state is the process's real state; when it ends, the status events carry the exit code
the way Batch words them.

Test controls: ``fail_next(n, status)`` answers the next n requests with an error (e.g. 503),
``preempt(job_id)`` preempts a running job and ``preempt_first(n)`` the next n jobs created (each
ends with exit code 50001 however its command ended), ``create_requests`` / ``cancel_requests`` /
``delete_requests`` count what reached the API, ``created`` lists the jobs created in order, and
``pid_of(job_id)`` names the job's process.

    with FakeBatchApi() as fake:
        client = BatchServiceClient(transport="rest", client_options={"api_endpoint": fake.endpoint},
                                    credentials=AnonymousCredentials())
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

_JOBS = re.compile(r"^/v1/(projects/[^/]+/locations/[^/]+)/jobs$")
_JOB = re.compile(r"^/v1/(projects/[^/]+/locations/[^/]+/jobs/([^/:]+))(:cancel)?$")
_STATUS_NAMES = {503: "UNAVAILABLE", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 404: "NOT_FOUND", 409: "ALREADY_EXISTS"}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


class _FakeJob:
    """One job: the Job JSON as created, and the process that plays its single task."""

    def __init__(self, name: str, body: dict, process: subprocess.Popen[bytes], log_dir: Path) -> None:
        self.name = name
        self.body = body
        self.process = process
        self.log_dir = log_dir
        self.uid = f"fake-{uuid.uuid4().hex[:12]}"
        self.created = _now()
        self.state = "RUNNING"
        self.events: list[dict] = [
            {"type": "STATUS_CHANGED", "description": f"Job state is set from QUEUED to SCHEDULED for job {name}.", "eventTime": self.created},
            {"type": "STATUS_CHANGED", "description": f"Job state is set from SCHEDULED to RUNNING for job {name}.", "eventTime": self.created},
        ]
        self.lock = threading.Lock()

    def finish(self, exit_code: int) -> None:
        """Record the end of the task the way Batch words it."""
        with self.lock:
            if self.state != "RUNNING":
                return
            new = "SUCCEEDED" if exit_code == 0 else "FAILED"
            why = " due to Spot VM preemption" if exit_code == 50001 else ""
            self.events.append(
                {
                    "type": "STATUS_CHANGED",
                    "description": f"Task state is updated from RUNNING to {new} on zones/fake-zone/instances/0{why} with exit code {exit_code}.",
                    "eventTime": _now(),
                    "taskExecution": {"exitCode": exit_code},
                    "taskState": new,
                }
            )
            self.events.append(
                {"type": "STATUS_CHANGED", "description": f"Job state is set from RUNNING to {new} for job {self.name}.", "eventTime": _now()}
            )
            self.state = new

    def cancel(self, final_state: str) -> None:
        with self.lock:
            if self.state == "RUNNING":
                self.events.append(
                    {"type": "STATUS_CHANGED", "description": f"Job state is set from RUNNING to {final_state} for job {self.name}.", "eventTime": _now()}
                )
                self.state = final_state
        _kill_group(self.process)

    def as_json(self) -> dict:
        with self.lock:
            return {
                **self.body,
                "name": self.name,
                "uid": self.uid,
                "createTime": self.created,
                "status": {"state": self.state, "statusEvents": list(self.events)},
            }


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=5)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


class FakeBatchApi:
    """The fake server. ``endpoint`` is its base URL; ``images`` maps an image URI to the interpreter that plays it."""

    def __init__(self) -> None:
        self.jobs: dict[str, _FakeJob] = {}
        self.images: dict[str, str] = {}
        self.create_requests = 0
        self.cancel_requests = 0
        self.delete_requests = 0
        self.injected_errors = 0
        self.created: list[str] = []
        self._preempt_left = 0
        self._fail: list[int] = []
        self._lose_replies: list[int] = []
        self._lock = threading.Lock()
        self._workdir = Path(tempfile.mkdtemp(prefix="fake-batch-"))
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeBatchApi:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        for job in self.jobs.values():
            _kill_group(job.process)

    # -- test controls ----------------------------------------------------------------------------

    def fail_next(self, count: int, status: int = 503) -> None:
        """Answer the next ``count`` requests with HTTP ``status``."""
        with self._lock:
            self._fail.extend([status] * count)

    def lose_next_reply(self, status: int = 503) -> None:
        """Carry out the next request, then answer it with HTTP ``status`` (a reply lost on the way)."""
        with self._lock:
            self._lose_replies.append(status)

    def preempt(self, job_id: str) -> None:
        """End the job as a Spot preemption does: the VM goes away and the task fails with 50001."""
        job = next(job for name, job in self.jobs.items() if name.endswith(f"/jobs/{job_id}"))
        _kill_group(job.process)
        job.state = "RUNNING"  # the watcher may have recorded the kill; Batch reports the preemption
        job.events = [e for e in job.events if "taskExecution" not in e and "from RUNNING" not in e["description"]]
        job.finish(50001)

    def preempt_first(self, count: int) -> None:
        """The next ``count`` jobs created end as preempted (exit code 50001) when their process ends,
        whatever it did: Batch reclaimed the VM before the task's own end was recorded. Whatever the
        process wrote stays under its output prefix, as a preempted job's files do."""
        with self._lock:
            self._preempt_left += count

    def pid_of(self, job_id: str) -> int:
        return next(job.process.pid for name, job in self.jobs.items() if name.endswith(f"/jobs/{job_id}"))

    def job_body(self, job_id: str) -> dict:
        """The Job JSON as the client sent it."""
        return next(job.body for name, job in self.jobs.items() if name.endswith(f"/jobs/{job_id}"))

    # -- the API ----------------------------------------------------------------------------------

    def _run(self, name: str, body: dict, preempted: bool = False) -> _FakeJob:
        task = body["taskGroups"][0]["taskSpec"]
        container = task["runnables"][0]["container"]
        variables = task.get("environment", {}).get("variables", {})
        job_dir = self._workdir / name.rsplit("/", 1)[-1]
        (job_dir / "bin").mkdir(parents=True)
        python = job_dir / "bin" / "python"  # the image's `python`
        interpreter = self.images.get(container.get("imageUri", ""), sys.executable)
        python.write_text(f"#!/bin/sh\nexec {shlex.quote(interpreter)} \"$@\"\n")
        python.chmod(0o755)
        env = {**os.environ, **variables, "PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        with open(job_dir / "stdout", "wb") as out, open(job_dir / "stderr", "wb") as err:
            process = subprocess.Popen(
                container["commands"], env=env, cwd=job_dir, stdout=out, stderr=err, start_new_session=True
            )
        job = _FakeJob(name, body, process, job_dir)

        def watch() -> None:
            exit_code = process.wait()
            job.finish(50001 if preempted else exit_code)

        threading.Thread(target=watch, daemon=True).start()
        return job

    def _handle(self, method: str, path: str, query: dict[str, list[str]], body: dict | None) -> tuple[int, dict]:
        with self._lock:
            if self._fail:
                self.injected_errors += 1
                return _error(self._fail.pop(0), "injected by FakeBatchApi.fail_next")
            lost = self._lose_replies.pop(0) if self._lose_replies else None
        reply = self._route(method, path, query, body)
        if lost is not None:
            self.injected_errors += 1
            return _error(lost, "injected by FakeBatchApi.lose_next_reply")
        return reply

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: dict | None) -> tuple[int, dict]:
        if match := _JOBS.match(path):
            parent = match.group(1)
            if method == "POST":
                return self._create(parent, query.get("jobId", [""])[0], body or {})
            if method == "GET":
                jobs = [j.as_json() for n, j in list(self.jobs.items()) if n.startswith(parent + "/")]
                return 200, {"jobs": jobs}
        if match := _JOB.match(path):
            name, cancel = match.group(1), match.group(3)
            job = self.jobs.get(name)
            if job is None:
                return _error(404, f"Job {name} not found")
            if method == "GET" and not cancel:
                return 200, job.as_json()
            if method == "POST" and cancel:
                self.cancel_requests += 1
                job.cancel("CANCELLED")
                return 200, {"name": f"{name}/operations/cancel-{uuid.uuid4().hex[:8]}", "done": True}
            if method == "DELETE":
                self.delete_requests += 1
                job.cancel("DELETION_IN_PROGRESS")
                del self.jobs[name]
                return 200, {"name": f"{name}/operations/delete-{uuid.uuid4().hex[:8]}", "done": True}
        return _error(404, f"no route for {method} {path}")

    def _create(self, parent: str, job_id: str, body: dict) -> tuple[int, dict]:
        self.create_requests += 1
        if not re.match(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$", job_id):
            return _error(400, f"Job id {job_id!r} is invalid")
        name = f"{parent}/jobs/{job_id}"
        with self._lock:
            if name in self.jobs:
                return _error(409, f"Resource {name} already exists")
            preempted, self._preempt_left = self._preempt_left > 0, max(self._preempt_left - 1, 0)
            self.jobs[name] = job = self._run(name, body, preempted)
            self.created.append(job_id)
        return 200, job.as_json()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                status, reply = fake._handle(self.command, url.path, parse_qs(url.query), json.loads(raw) if raw else None)
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _serve

            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

        return Handler


def _error(status: int, message: str) -> tuple[int, dict]:
    return status, {"error": {"code": status, "message": message, "status": _STATUS_NAMES.get(status, "UNKNOWN")}}
