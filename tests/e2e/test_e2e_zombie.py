"""A run whose flow-run process and worker die with it (a machine lost, a container evicted) does not
stay Running forever: its heartbeats stop, the set-up's automation marks it Crashed, and a Retry on
a new worker collects the GPU job that kept running, without submitting another.

Its own stack (killing the worker would take the session's with it), with Prefect's shortest
heartbeat (30 s) so the automation's window is 90 s.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients.batch import JobState
from clients.batch.local import LocalProcessRunner
from deployments.automations import MISSED_HEARTBEATS, ZOMBIE_AUTOMATION
from deployments.local_stack import (
    HEARTBEAT_S,
    LocalStack,
    running_local_stack,
    start_worker,
)
from deployments.processes import Process, descendants, wait_until
from tests.e2e.test_e2e_runs import gpu_jobs
from tests.small_inputs import Inputs, make_inputs

pytestmark = pytest.mark.e2e

TOKEN = "zombie-token-41c9"
WINDOW_S = MISSED_HEARTBEATS * HEARTBEAT_S
# after the kill: the last heartbeat's window, plus the server's proactive evaluation and the action
CRASHED_WITHIN_S = WINDOW_S + 60


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, Inputs]]:
    root = tmp_path_factory.mktemp("zombie")
    inputs = make_inputs(root / "data")
    with running_local_stack(root, root / "data", TOKEN) as stack:
        yield stack, inputs


def process_group(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2])
    except (OSError, IndexError, ValueError):
        return None


def kill_worker_and_its_flow_runs(worker: Process, job_dir: Path) -> list[int]:
    """SIGKILL the worker and everything below it except the GPU job's process group (a Batch job
    lives on when the machine that submitted it dies); returns the pids killed."""
    job_group = int((job_dir / "pid").read_text().split()[0])
    victims = [pid for pid, _ in descendants(worker.popen.pid) if process_group(pid) != job_group]
    for pid in [*victims, worker.popen.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    worker.popen.wait(timeout=30)
    return victims


def test_a_run_whose_worker_died_is_crashed_by_its_missing_heartbeats_and_a_retry_reuses_its_gpu_job(
    stack: tuple[LocalStack, Inputs],
) -> None:
    system, inputs = stack
    with system.prefect() as prefect:
        (automation,) = prefect.post("/automations/filter", json={}).json()
    assert automation["name"] == ZOMBIE_AUTOMATION, automation

    runner = LocalProcessRunner(system.data_dir / "jobs")
    (worker,) = [p for p in system.processes if p.name == "worker"]
    # Enough generation steps that the job still runs when its flow run dies; one round, one job.
    body = inputs.request_body("Does a zombie run come back?", num_steps=200, max_iterations=1)
    with system.api() as api:
        created = api.post("/runs", json=body)
        assert created.status_code == 202, created.text
        run_id = created.json()["id"]

        (job_dir,) = wait_until(lambda: gpu_jobs(system.data_dir), 300, "the run's GPU job", watch=system.processes)
        wait_until(lambda: runner.status(job_dir.name).state is JobState.RUNNING, 60, "the GPU job to run")
        assert api.get(f"/runs/{run_id}").json()["state"]["type"] == "RUNNING"

        victims = kill_worker_and_its_flow_runs(worker, job_dir)
        killed_at = time.monotonic()
        system.processes.remove(worker)
        assert victims, "no flow-run process below the worker"

        def crashed() -> dict | None:
            run = api.get(f"/runs/{run_id}").json()
            return run if run["state"]["type"] == "CRASHED" else None

        run = wait_until(crashed, CRASHED_WITHIN_S, f"run {run_id} to be marked Crashed", watch=system.processes)
        took = time.monotonic() - killed_at
        print(f"\nzombie run crashed {took:.0f} s after its worker died (window {WINDOW_S} s)")
        assert "heartbeat" in (run["state"]["message"] or ""), run["state"]

        system.processes.append(start_worker(system.env, system.home / "logs", name="local-2"))
        retried = api.post(f"/runs/{run_id}/retry")
        assert retried.status_code == 200, retried.text

    done = system.wait_for_run(run_id, timeout=600)
    assert done["state"]["type"] == "COMPLETED", done["state"]
    assert gpu_jobs(system.data_dir) == [job_dir], "the retry must collect the job that kept running, not submit another"
    assert runner.status(job_dir.name).state is JobState.SUCCEEDED
