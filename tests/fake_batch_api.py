"""A small Google Cloud Batch v1 REST API on 127.0.0.1 that really runs each job's container command.

It speaks the slice of the API that ``CloudBatchRunner`` uses through the real client
(``transport="rest"``): create (``?jobId=``; 409 if the id exists), get, list, list the tasks of
``taskGroups/group0``, ``:cancel`` and delete (both answer an Operation with ``done: true``). A job's
"container" is a local process per task: ``taskGroups[0].taskCount`` of them, at most ``parallelism``
at once, each with ``BATCH_TASK_INDEX`` / ``BATCH_TASK_COUNT`` and the task's environment variables
set, its ``commands`` run with a ``python`` on PATH that stands for the image (the venv's interpreter
unless the test registers another one for that image URI). The job's state follows the processes'
real states: SUCCEEDED when every task succeeded, FAILED once all ended and any failed. Each task's
events carry its exit code (``taskExecution.exitCode``); the job's final event words the first
failed task's end the way Batch does, in its text.

Test controls: ``fail_next(n, status)`` answers the next n requests with an error (e.g. 503),
``preempt(job_id)`` preempts a running job and ``preempt_first(n)`` the next n jobs created (each
task ends with exit code 50001 however its command ended), ``fail_task_of_next_job(k, code)`` makes
task k of the next job fail, ``create_requests`` / ``cancel_requests`` / ``delete_requests`` count
what reached the API, ``created`` lists the jobs created in order and ``task_counts`` their task
counts, ``pid_of(job_id)`` / ``pids_of(job_id)`` name the tasks' processes and
``task_exit_codes(job_id)`` their ends.

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
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self
from urllib.parse import parse_qs, urlparse

_JOBS = re.compile(r"^/v1/(projects/[^/]+/locations/[^/]+)/jobs$")
_TASKS = re.compile(r"^/v1/(projects/[^/]+/locations/[^/]+/jobs/[^/:]+)/taskGroups/group0/tasks$")
_JOB = re.compile(r"^/v1/(projects/[^/]+/locations/[^/]+/jobs/([^/:]+))(:cancel)?$")
_STATUS_NAMES = {503: "UNAVAILABLE", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 404: "NOT_FOUND", 409: "ALREADY_EXISTS"}


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class _FakeTask:
    """One task of a job: its index, its process once started, and its own status events."""

    def __init__(self, index: int, command: list[str]) -> None:
        self.index = index
        self.command = command
        self.process: subprocess.Popen[bytes] | None = None
        self.state = "PENDING"
        self.exit_code: int | None = None
        self.events: list[dict] = []

    def as_json(self, job_name: str) -> dict:
        return {
            "name": f"{job_name}/taskGroups/group0/tasks/{self.index}",
            "status": {"state": self.state, "statusEvents": list(self.events)},
        }


class _FakeJob:
    """One job: the Job JSON as created, and the tasks that play its task group (processes, at most
    ``parallelism`` running at once). Job-level events word a task's failure as Batch does, in text;
    each task's own events carry ``taskExecution.exitCode``."""

    def __init__(self, name: str, body: dict, tasks: list[_FakeTask], parallelism: int, start: Callable[[_FakeTask], None]) -> None:
        self.name = name
        self.body = body
        self.tasks = tasks
        self.parallelism = parallelism
        self._start = start
        self.preempt_all = False  # preempt_first: every task ends with 50001, whatever its process did
        self.uid = f"fake-{uuid.uuid4().hex[:12]}"
        self.created = _now()
        self.state = "RUNNING"
        self.events: list[dict] = [
            {"type": "STATUS_CHANGED", "description": f"Job state is set from QUEUED to SCHEDULED for job {name}.", "eventTime": self.created},
            {"type": "STATUS_CHANGED", "description": f"Job state is set from SCHEDULED to RUNNING for job {name}.", "eventTime": self.created},
        ]
        self.lock = threading.RLock()

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """Task 0's process (the whole job's, for a 1-task job)."""
        return self.tasks[0].process

    def start_pending(self) -> None:
        """Start pending tasks, in index order, while fewer than ``parallelism`` run."""
        with self.lock:
            while self.state == "RUNNING" and sum(t.state == "RUNNING" for t in self.tasks) < self.parallelism:
                task = next((t for t in self.tasks if t.state == "PENDING"), None)
                if task is None:
                    return
                task.state = "RUNNING"
                task.events.append({"type": "STATUS_CHANGED", "description": "Task state is updated from ASSIGNED to RUNNING.", "eventTime": _now()})
                self._start(task)

    def task_ended(self, task: _FakeTask, exit_code: int) -> None:
        """Record a task's end the way Batch words it; end the job once every task ended."""
        with self.lock:
            if task.state != "RUNNING":
                return  # already recorded (a preemption)
            code = 50001 if self.preempt_all else exit_code
            task.state, task.exit_code = ("SUCCEEDED" if code == 0 else "FAILED"), code
            why = " due to Spot VM preemption" if code == 50001 else ""
            task.events.append({
                "type": "STATUS_CHANGED",
                "description": f"Task state is updated from RUNNING to {task.state} on zones/fake-zone/instances/{task.index}{why} with exit code {code}.",
                "eventTime": _now(),
                "taskExecution": {"exitCode": code},
                "taskState": task.state,
            })
            if self.state != "RUNNING":
                return
            if all(t.state in ("SUCCEEDED", "FAILED") for t in self.tasks):
                self._finish()
            else:
                self.start_pending()

    def _finish(self) -> None:
        failed = [t for t in self.tasks if t.state == "FAILED"]
        new = "FAILED" if failed else "SUCCEEDED"
        text = f"Job state is set from RUNNING to {new} for job {self.name}."
        if failed:
            first = min(failed, key=lambda t: t.index)
            text += (
                f" Job failed due to task failure. Specifically, task with index {first.index} failed due to the "
                f"following task event: \"{first.events[-1]['description']}\""
            )
        self.events.append({"type": "STATUS_CHANGED", "description": text, "eventTime": _now()})
        self.state = new

    def preempt(self) -> None:
        """Batch took the VMs away: every task not yet ended (pending ones too) fails with 50001."""
        with self.lock:
            if self.state != "RUNNING":
                return
            self.preempt_all = True
            for task in self.tasks:
                if task.state == "PENDING":
                    task.state = "RUNNING"  # never started: no process, and nothing left pending to start
            for task in self.tasks:
                self.task_ended(task, 50001)
        self.kill()

    def cancel(self, final_state: str) -> None:
        with self.lock:
            if self.state == "RUNNING":
                self.events.append(
                    {"type": "STATUS_CHANGED", "description": f"Job state is set from RUNNING to {final_state} for job {self.name}.", "eventTime": _now()}
                )
                self.state = final_state
        self.kill()

    def kill(self) -> None:
        for task in self.tasks:
            if task.process is not None:
                _kill_group(task.process)

    def task_counts(self) -> dict[str, str]:
        counts: dict[str, int] = {}
        for task in self.tasks:
            counts[task.state] = counts.get(task.state, 0) + 1
        return {state: str(n) for state, n in counts.items()}  # int64 in proto JSON

    def as_json(self) -> dict:
        with self.lock:
            body = {**self.body, "taskGroups": [{**g} for g in self.body.get("taskGroups", [])]}
            if body["taskGroups"]:
                body["taskGroups"][0]["name"] = f"{self.name}/taskGroups/group0"
            return {
                **body,
                "name": self.name,
                "uid": self.uid,
                "createTime": self.created,
                "status": {
                    "state": self.state,
                    "statusEvents": list(self.events),
                    "taskGroups": {"group0": {"counts": self.task_counts()}},
                },
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
        self.task_counts: dict[str, int] = {}  # job id -> taskCount, in the order the jobs were created
        self._fail_tasks: list[tuple[int, int]] = []
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

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        for job in self.jobs.values():
            job.kill()

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
        """End the job as a Spot preemption does: the VMs go away and every task not yet ended fails with 50001."""
        self._job(job_id).preempt()

    def preempt_first(self, count: int) -> None:
        """The next ``count`` jobs created end as preempted (every task exit code 50001) when their tasks'
        processes end, whatever they did: Batch reclaimed the VMs before the tasks' own ends were recorded.
        Whatever the processes wrote stays under the output prefix, as a preempted job's files do."""
        with self._lock:
            self._preempt_left += count

    def fail_task_of_next_job(self, index: int, exit_code: int = 1) -> None:
        """Task ``index`` of the next job created exits with ``exit_code`` at once, having written nothing;
        its stderr says the failure was injected (through the job_wrapper, when the command runs one, so
        the tail reaches storage as a real failing task's does). The job's other tasks run as usual."""
        with self._lock:
            self._fail_tasks.append((index, exit_code))

    def pid_of(self, job_id: str) -> int:
        """The process (and process group) of the job's task 0."""
        return self.pids_of(job_id)[0]

    def pids_of(self, job_id: str) -> list[int]:
        """The processes of the job's tasks started so far, by task index."""
        return [t.process.pid for t in self._job(job_id).tasks if t.process is not None]

    def task_exit_codes(self, job_id: str) -> dict[int, int | None]:
        """Task index -> its exit code (None while it has not ended)."""
        return {t.index: t.exit_code for t in self._job(job_id).tasks}

    def job_body(self, job_id: str) -> dict:
        """The Job JSON as the client sent it."""
        return self._job(job_id).body

    def _job(self, job_id: str) -> _FakeJob:
        return next(job for name, job in self.jobs.items() if name.endswith(f"/jobs/{job_id}"))

    # -- the API ----------------------------------------------------------------------------------

    def _run(self, name: str, body: dict, preempted: bool = False, fail_task: tuple[int, int] | None = None) -> _FakeJob:
        group = body["taskGroups"][0]
        task_spec = group["taskSpec"]
        container = task_spec["runnables"][0]["container"]
        variables = task_spec.get("environment", {}).get("variables", {})
        count = int(group.get("taskCount", 1))  # int64: a string in proto JSON
        parallelism = min(int(group.get("parallelism") or count), count)
        job_dir = self._workdir / name.rsplit("/", 1)[-1]
        (job_dir / "bin").mkdir(parents=True)
        python = job_dir / "bin" / "python"  # the image's `python`
        interpreter = self.images.get(container.get("imageUri", ""), sys.executable)
        python.write_text(f"#!/bin/sh\nexec {shlex.quote(interpreter)} \"$@\"\n")
        python.chmod(0o755)
        env = {**os.environ, **variables, "PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        commands = container["commands"]
        tasks = [_FakeTask(k, commands) for k in range(count)]
        if fail_task is not None and fail_task[0] < count:
            tasks[fail_task[0]].command = _injected_failure(commands, *fail_task)

        def start(task: _FakeTask) -> None:
            task_dir = job_dir / f"task-{task.index}"
            task_dir.mkdir()
            task_env = {**env, "BATCH_TASK_INDEX": str(task.index), "BATCH_TASK_COUNT": str(count)}  # as Batch sets them
            with open(task_dir / "stdout", "wb") as out, open(task_dir / "stderr", "wb") as err:
                task.process = process = subprocess.Popen(
                    task.command, env=task_env, cwd=task_dir, stdout=out, stderr=err, start_new_session=True
                )
            threading.Thread(target=lambda: job.task_ended(task, process.wait()), daemon=True).start()

        job = _FakeJob(name, body, tasks, parallelism, start)
        job.preempt_all = preempted
        job.start_pending()
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
        if (match := _TASKS.match(path)) and method == "GET":
            job = self.jobs.get(match.group(1))
            if job is None:
                return _error(404, f"Job {match.group(1)} not found")
            return 200, {"tasks": [t.as_json(job.name) for t in job.tasks]}
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
            fail_task = self._fail_tasks.pop(0) if self._fail_tasks else None
            self.jobs[name] = job = self._run(name, body, preempted, fail_task)
            self.created.append(job_id)
            self.task_counts[job_id] = len(job.tasks)
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


def _injected_failure(commands: list[str], index: int, exit_code: int) -> list[str]:
    """The command of a task made to fail: a `python -c` that says so on stderr and exits, run inside
    the job_wrapper when the job's command has one (so its stderr tail is saved as usual)."""
    script = (
        f"import sys; sys.stderr.write('task {index}: failure injected by FakeBatchApi.fail_task_of_next_job "
        f"(exit code {exit_code})\\n'); sys.exit({exit_code})"
    )
    failing = ["python", "-c", script]
    if "clients.batch.job_wrapper" in commands and "--" in commands:
        return [*commands[: commands.index("--") + 1], *failing]
    return failing


def _error(status: int, message: str) -> tuple[int, dict]:
    return status, {"error": {"code": status, "message": message, "status": _STATUS_NAMES.get(status, "UNKNOWN")}}
