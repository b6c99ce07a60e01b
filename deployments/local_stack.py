"""The whole system on one machine, as separate processes: a Prefect server on SQLite, the
deployments from prefect.yaml (``python -m deployments.setup local``), a process worker and the API.

The demo runs an analysis on it; the end-to-end tests drive it over HTTP. Everything it writes lives
under one directory (server database, Prefect home, logs), so runs can be looked at afterwards.

The Prefect server is no open door: anyone who reaches it could create runs with any parameters,
bypassing the API's token and URI checks. It starts with ``PREFECT_SERVER_API_AUTH_STRING`` (a fresh
``admin:<random>`` per stack) and every client the stack starts gets the same string as
``PREFECT_API_AUTH_STRING``; the UI asks for it on its login page.
"""

from __future__ import annotations

import base64
import compileall
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from deployments.processes import Process, free_port, start, wait_until

PROJECT_DIR = Path(__file__).resolve().parents[1]
LOCAL_POOL = "stackflows-local"
CODE_PACKAGES = ("flows", "tasks", "clients", "inference", "api", "deployments", "workers")
SERVER_START_S = 120  # a cold `prefect server start` on a busy 2-core machine
FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})
# Seconds between flow-run heartbeats (Prefect's minimum): the set-up's zombie automation reads the
# same variable, so a run whose worker died with it is marked Crashed after three missed heartbeats.
HEARTBEAT_S = 30


class RetryBusyServer(httpx.HTTPTransport):
    """Retries what a busy Prefect server answers 503 or 429 (on SQLite, "database is locked" under
    load), after its Retry-After or a doubling delay, as Prefect's own client does."""

    ATTEMPTS = 5

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for attempt in range(self.ATTEMPTS):
            response = super().handle_request(request)
            if response.status_code not in (429, 503) or attempt == self.ATTEMPTS - 1:
                return response
            response.close()
            time.sleep(float(response.headers.get("Retry-After", 0.5 * 2**attempt)))
        raise AssertionError("unreachable: the last attempt returns")


@dataclass
class LocalStack:
    home: Path
    data_dir: Path
    prefect_url: str
    api_url: str
    api_token: str
    env: dict[str, str]
    processes: list[Process] = field(default_factory=list)
    auth_string: str = ""  # what the Prefect server requires (``user:password``); also the UI's login

    @property
    def ui_url(self) -> str:
        return self.prefect_url.removesuffix("/api")

    @property
    def prefect_headers(self) -> dict[str, str]:
        """The Authorization header Prefect's own client sends for ``PREFECT_API_AUTH_STRING``."""
        return prefect_auth_headers(self.auth_string)

    def prefect(self, authenticated: bool = True) -> httpx.Client:
        """An HTTP client for Prefect's REST API; ``authenticated=False`` sends no credentials."""
        headers = self.prefect_headers if authenticated else {}
        return httpx.Client(base_url=self.prefect_url, headers=headers, timeout=30, transport=RetryBusyServer())

    def credentials(self) -> dict[str, str]:
        """What a user needs to reach the stack: API URL and token, Prefect UI URL and login."""
        return {
            "STACKFLOWS_API_URL": self.api_url,
            "STACKFLOWS_API__TOKEN": self.api_token,
            "PREFECT_UI_URL": self.ui_url,
            "PREFECT_UI_LOGIN": self.auth_string,  # typed into the UI's password field as it is
            "PREFECT_API_URL": self.prefect_url,
            "PREFECT_API_AUTH_STRING": self.auth_string,
        }

    def write_credentials(self, path: Path) -> Path:
        """``credentials()`` as a shell-sourceable file only its owner can read (mode 0600)."""
        lines = ["# The running local stack (deployments.local_stack); removed when it stops.\n"]
        lines += [f"{key}={value}\n" for key, value in self.credentials().items()]
        write_private(path, "".join(lines))
        return path

    def api(self, token: str | None = "") -> httpx.Client:
        """An HTTP client for the API; ``token=None`` sends no Authorization header."""
        token = self.api_token if token == "" else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        # 120 s: on SQLite the Prefect server takes one write at a time, and with a few runs in flight
        # on 2 cores a read can wait out the Prefect client's own backoff on "database is locked"
        # (2 + 4 + 8 + 16 s) before the API answers; slow is not wrong, and the soak polls through it.
        return httpx.Client(base_url=self.api_url, headers=headers, timeout=120)

    def wait_for_run(
        self,
        run_id: str,
        states: frozenset[str] = FINAL_STATES,
        timeout: float = 300,
        on_view: Callable[[dict], None] | None = None,
    ) -> dict:
        """Poll GET /runs/{id} until the run's state type is one of ``states``; returns that view.

        ``on_view`` sees every view on the way (the demo prints state and progress from it). Fails
        naming the run when ``timeout`` passes or one of the stack's processes exits.
        """
        with self.api() as api:

            def reached() -> dict | None:
                run = api.get(f"/runs/{run_id}").json()
                if on_view is not None:
                    on_view(run)
                return run if run["state"] and run["state"]["type"] in states else None

            return wait_until(reached, timeout, f"run {run_id} to reach {sorted(states)}", watch=self.processes)

    def wait_for_exit(self, interval: float = 1.0) -> Process:
        """Block until one of the stack's processes exits and return it (Ctrl-C or SIGTERM end the wait
        sooner, through ``interrupted_by_signals``)."""
        while True:
            for process in self.processes:
                if process.popen.poll() is not None:
                    return process
            time.sleep(interval)

    def setup(self) -> str:
        """``python -m deployments.setup local`` against this stack's server; returns its output."""
        done = subprocess.run(
            [sys.executable, "-m", "deployments.setup", "local"],
            cwd=PROJECT_DIR, env=self.env, capture_output=True, text=True, timeout=600,
        )
        if done.returncode != 0:
            raise RuntimeError(f"deployments.setup local failed:\n{done.stdout}{done.stderr}")
        return done.stdout


def model_env(checkpoint: Path, gene_list: Path) -> dict[str, str]:
    """The model a run uses when it names none, for the worker's environment: a run started from the
    Prefect UI's form with only its required fields then runs on these."""
    return {
        "STACKFLOWS_MODEL__CHECKPOINT_URI": checkpoint.resolve().as_uri(),
        "STACKFLOWS_MODEL__GENE_LIST_URI": gene_list.resolve().as_uri(),
    }


def new_auth_string() -> str:
    """A fresh ``admin:<random>`` for one stack's Prefect server."""
    return f"admin:{secrets.token_urlsafe(24)}"


def prefect_auth_headers(auth_string: str) -> dict[str, str]:
    """HTTP Basic with the auth string, as Prefect's client sends it (no header without one)."""
    if not auth_string:
        return {}
    return {"Authorization": "Basic " + base64.b64encode(auth_string.encode()).decode()}


def write_private(path: Path, text: str) -> None:
    """Write ``text`` readable by its owner only, created 0600 (never briefly wider) and swapped in whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a leftover temp file keeps its old mode through O_CREAT
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def stack_env(
    home: Path,
    prefect_url: str,
    data_dir: Path,
    api_token: str,
    ui: bool,
    database_url: str | None = None,
    *,
    auth_string: str | None = None,
    scheduler: bool = False,
) -> dict[str, str]:
    """This machine's environment without its PREFECT_/STACKFLOWS_/ANTHROPIC_ settings, plus the stack's own.

    ``database_url`` (e.g. ``postgresql+asyncpg://...``, the production set-up) replaces the SQLite file.
    Clients authenticate with ``auth_string`` (a fresh one when not given; ``start_prefect_server``
    makes the server require it). ``scheduler`` turns on the server's scheduler (the nightly canary).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "STACKFLOWS_", "ANTHROPIC_"))}
    env.update(
        PREFECT_HOME=str(home / "prefect-home"),
        PREFECT_API_URL=prefect_url,
        PREFECT_SERVER_DATABASE_CONNECTION_URL=database_url or f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="true" if ui else "false",
        PREFECT_API_AUTH_STRING=auth_string or new_auth_string(),
        # Off for tests (no nightly canary runs in the middle of one); on for a stack kept up.
        PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="true" if scheduler else "false",
        PREFECT_WORKER_QUERY_SECONDS="1",  # pick up runs (and cancellations) quickly
        PREFECT_SERVER_EPHEMERAL_ENABLED="false",
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY=str(HEARTBEAT_S),
        STACKFLOWS_DATA_DIR=str(data_dir),
        STACKFLOWS_API__TOKEN=api_token,
        PYTHONUNBUFFERED="1",
    )
    return env


@contextmanager
def running_local_stack(
    home: Path,
    data_dir: Path,
    api_token: str,
    *,
    extra_env: dict[str, str] | None = None,
    prefect_port: int | None = None,
    ui: bool = False,
    database_url: str | None = None,
    scheduler: bool = False,
) -> Iterator[LocalStack]:
    """Start server, deployments, worker and API; stop them all on exit (also on errors).

    ``extra_env`` adds settings on top of the stack's own (e.g. a checkpoint URI, injected faults).
    """
    compile_project_code()
    home.mkdir(parents=True, exist_ok=True)
    logs = home / "logs"
    logs.mkdir(exist_ok=True)
    prefect_port = prefect_port or free_port()
    prefect_url = f"http://127.0.0.1:{prefect_port}/api"
    api_port = free_port()
    api_url = f"http://127.0.0.1:{api_port}"
    env = {
        **stack_env(home, prefect_url, data_dir, api_token, ui, database_url, scheduler=scheduler),
        "STACKFLOWS_API__PUBLIC_URL": api_url,  # flow runs link their outputs as URLs signed for the API
        **(extra_env or {}),
    }
    stack = LocalStack(
        home=home, data_dir=data_dir, prefect_url=prefect_url, api_url=api_url,
        api_token=api_token, env=env, auth_string=env["PREFECT_API_AUTH_STRING"],
    )
    try:
        stack.processes.append(start_prefect_server(prefect_port, env, logs))
        stack.setup()

        worker = start_worker(env, logs)
        stack.processes.append(worker)
        stack.processes.append(start_api(api_port, env, logs))
        wait_until(lambda: _worker_online(stack), 60, "the worker to poll its pool", watch=[worker])
        yield stack
    finally:
        for process in reversed(stack.processes):
            process.stop()


def compile_project_code(root: Path = PROJECT_DIR) -> None:
    """Byte-compile the checkout's code, so that each flow run and GPU job (a new process each) loads it
    instead of compiling it from source.

    Python writes these caches on import, unless ``PYTHONDONTWRITEBYTECODE`` is set (CI machines and
    containers set it); then every flow-run process compiled the analysis flow's ~90 modules again,
    0.2-0.3 s of its start. Up-to-date caches are left as they are; a read-only checkout is no error.
    """
    for package in CODE_PACKAGES:
        compileall.compile_dir(root / package, quiet=2)


def start_prefect_server(port: int, env: dict[str, str], logs: Path, timeout: float = SERVER_START_S) -> Process:
    """``prefect server start`` on 127.0.0.1:``port``, returned once its health check answers; through
    ``deployments.prefect_server``, so that on SQLite a write transaction never fails on a stale read.

    The server requires the auth string its clients send (``PREFECT_API_AUTH_STRING`` in ``env``).
    """
    command = [sys.executable, "-m", "deployments.prefect_server", "--host", "127.0.0.1", "--port", str(port)]
    server_env = dict(env)
    if env.get("PREFECT_API_AUTH_STRING"):
        server_env["PREFECT_SERVER_API_AUTH_STRING"] = env["PREFECT_API_AUTH_STRING"]
    server = start("prefect-server", command, server_env, logs, PROJECT_DIR)
    _await_health(server, f"http://127.0.0.1:{port}/api/health", timeout, "the Prefect server")
    return server


def start_worker(env: dict[str, str], logs: Path, name: str = "local") -> Process:
    """A process worker for the local pool (a second one, after the first died, needs no other name)."""
    # No `--limit`: the deployments' concurrency limits and the GPU limit bound the work (Prefect
    # 3.8's worker crashed with one when a run it still held a slot for was retried at once; 3.9's no longer).
    command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", LOCAL_POOL, "--name", name]
    return start("worker", command, env, logs, PROJECT_DIR)


def start_api(port: int, env: dict[str, str], logs: Path) -> Process:
    """The HTTP API (``python -m api``) on 127.0.0.1:``port``, returned once its health check answers."""
    api = start("api", [sys.executable, "-m", "api", "--port", str(port)], env, logs, PROJECT_DIR)
    _await_health(api, f"http://127.0.0.1:{port}/healthz", 60, "the API")
    return api


def _await_health(process: Process, url: str, timeout: float, what: str) -> None:
    try:
        wait_until(lambda: _ok(url), timeout, what, watch=[process])
    except BaseException:
        process.stop()  # the caller never gets it, so it cannot stop it
        raise


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _worker_online(stack: LocalStack) -> bool:
    try:
        with stack.prefect() as prefect:
            r = prefect.post(f"/work_pools/{LOCAL_POOL}/workers/filter", json={}, timeout=5)
    except httpx.HTTPError:
        return False
    return r.status_code == 200 and any(w.get("status") == "ONLINE" for w in r.json())
