"""The whole system on loopback, once per e2e module: a real Prefect server (SQLite), the
deployments from prefect.yaml (through ``python -m deployments.setup local``), a process worker and
the API, each a separate process like on a laptop. Inputs are a small subset of pbmc68k and a tiny
untrained STACK checkpoint, so a run takes seconds of compute."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.e2e.processes import Process, free_port, start, wait_until
from tests.small_inputs import Inputs, make_inputs

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "e2e-token-0b7d"
SERVER_START_S = 120  # a cold `prefect server start` on a busy 2-core machine
RUN_TIMEOUT_S = 300


@dataclass
class System:
    root: Path
    data_dir: Path
    api_url: str
    prefect_url: str
    env: dict[str, str]
    inputs: Inputs
    processes: list[Process] = field(default_factory=list)

    def api(self, token: str | None = TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.api_url, headers=headers, timeout=30)

    def request(self, question: str, **overrides: object) -> dict:
        """An analysis request with an explicit plan, so no agent key is needed."""
        h5ad = self.inputs.h5ad.as_uri()
        body = {
            "question": question,
            "prompt_uri": h5ad,
            "query_uri": h5ad,
            "gene_list_uri": self.inputs.gene_list.as_uri(),
            "checkpoint_uri": self.inputs.checkpoint.as_uri(),
            "split_column": "bulk_labels",
            "split_values": ["CD19+ B"],
            "query_obs_filter": {"bulk_labels": ["CD14+ Monocyte"]},
            "num_steps": 2,
        }
        return {**body, **overrides}

    def wait_for_run(self, run_id: str, states: set[str], timeout: float = RUN_TIMEOUT_S) -> dict:
        """Poll GET /runs/{id} until the run's state type is one of ``states``."""
        with self.api() as api:

            def reached() -> dict | None:
                run = api.get(f"/runs/{run_id}").json()
                return run if run["state"] and run["state"]["type"] in states else None

            return wait_until(reached, timeout, f"run {run_id} to reach {states}", watch=self.processes)

    def setup(self) -> str:
        """``python -m deployments.setup local`` against this system's server; returns its output."""
        done = subprocess.run(
            [sys.executable, "-m", "deployments.setup", "local"],
            cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=600,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout


def isolated_env(root: Path, prefect_url: str, data_dir: Path) -> dict[str, str]:
    """This machine's environment without any PREFECT_/STACKFLOWS_ settings, plus the system's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "STACKFLOWS_", "ANTHROPIC_"))}
    env.update(
        PREFECT_HOME=str(root / "prefect-home"),
        PREFECT_API_URL=prefect_url,
        PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{root / 'prefect.db'}",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",  # no nightly canary runs during the test
        PREFECT_WORKER_QUERY_SECONDS="1",  # pick up runs (and cancellations) quickly
        PREFECT_SERVER_EPHEMERAL_ENABLED="false",
        STACKFLOWS_DATA_DIR=str(data_dir),
        STACKFLOWS_API__TOKEN=TOKEN,
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    root = tmp_path_factory.mktemp("e2e")
    data_dir = root / "data"
    logs = root / "logs"
    logs.mkdir()
    prefect_port, api_port = free_port(), free_port()
    prefect_url = f"http://127.0.0.1:{prefect_port}/api"
    env = isolated_env(root, prefect_url, data_dir)
    env.update(fault_env())
    system = System(
        root=root, data_dir=data_dir, api_url=f"http://127.0.0.1:{api_port}", prefect_url=prefect_url,
        env=env, inputs=make_inputs(data_dir),
    )
    python = sys.executable
    try:
        server = start(
            "prefect-server",
            [python, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
            env, logs, ROOT,
        )
        system.processes.append(server)
        wait_until(lambda: _ok(f"{prefect_url}/health"), SERVER_START_S, "the Prefect server", watch=[server])

        system.setup()

        worker = start(
            "worker",
            [python, "-m", "prefect", "worker", "start", "--pool", "stackflows-local", "--name", "e2e", "--limit", "2"],
            env, logs, ROOT,
        )
        api = start("api", [python, "-m", "api", "--port", str(api_port)], env, logs, ROOT)
        system.processes += [worker, api]
        wait_until(lambda: _ok(f"{system.api_url}/healthz"), 60, "the API", watch=[api])
        wait_until(lambda: _worker_online(prefect_url), 60, "the worker to poll its pool", watch=[worker])
        yield system
    finally:
        for process in reversed(system.processes):
            process.stop()


def fault_env() -> dict[str, str]:
    """Every run fails once, right after its GPU job finished (flows/faults.py): the retry test's fault."""
    return {"STACKFLOWS_FAULTS__FAIL_ONCE_AFTER": '["stack_inference"]'}


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _worker_online(prefect_url: str) -> bool:
    try:
        r = httpx.post(f"{prefect_url}/work_pools/stackflows-local/workers/filter", json={}, timeout=5)
    except httpx.HTTPError:
        return False
    return r.status_code == 200 and any(w.get("status") == "ONLINE" for w in r.json())
