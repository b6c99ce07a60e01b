"""Waiting on a GPU job ends when the job does: the local runner sees its process end instead of
sleeping out a poll interval, and any backend is polled at the shortest interval once the job writes."""

from __future__ import annotations

import os
import signal
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prefect import flow

from clients.batch import BatchJobRequest, BatchRunner, JobNotFoundError, JobState, JobStatus, runner_from_settings
from clients.settings import Settings, get_settings
from inference.contract import JobProgress, StackJobSpec
from tasks.gpu_job import SubmittedJob, wait_for_gpu_job
from tests.batch.conftest import job_pid

LONG_POLL_S = 30.0  # far longer than the stand-in job runs once its gate opens


@pytest.fixture
def gated(standin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The stand-in job runs until this file exists, then succeeds."""
    gate = tmp_path / "gate"
    monkeypatch.setenv("STACKFLOWS_TEST_GATE", str(gate))
    standin("gated")
    return gate


@pytest.fixture
def long_polls(local_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Poll intervals no test could sit out: if a wait ends, it is because the job ended."""
    monkeypatch.setenv("STACKFLOWS_BATCH__POLL_INITIAL_S", str(LONG_POLL_S))
    monkeypatch.setenv("STACKFLOWS_BATCH__POLL_MAX_S", str(LONG_POLL_S))
    get_settings.cache_clear()
    return get_settings()


class CountingRunner(BatchRunner):
    """The settings' runner, counting status calls and recording each wait's timeout and result."""

    def __init__(self, inner: BatchRunner) -> None:
        self.inner = inner
        self.statuses: list[JobState] = []
        self.waits: list[tuple[float, bool]] = []
        self.first_status = threading.Event()

    def submit(self, request: BatchJobRequest, job_id: str) -> str:
        return self.inner.submit(request, job_id)

    def status(self, job_id: str) -> JobStatus:
        status = self.inner.status(job_id)
        self.statuses.append(status.state)
        self.first_status.set()
        return status

    def cancel(self, job_id: str) -> None:
        self.inner.cancel(job_id)

    def find_jobs(self, labels: dict[str, str]) -> list[str]:
        return self.inner.find_jobs(labels)

    def logs_hint(self, job_id: str) -> str:
        return self.inner.logs_hint(job_id)

    def wait_for_change(self, job_id: str, timeout_s: float) -> bool:
        changed = self.inner.wait_for_change(job_id, timeout_s)
        self.waits.append((timeout_s, changed))
        return changed


def test_the_local_wait_returns_when_the_job_process_ends(local_settings, spec: StackJobSpec, gated: Path) -> None:
    runner = runner_from_settings()
    runner.submit(BatchJobRequest.for_stack_job(spec), "stack-wait-a1")
    assert runner.wait_for_change("stack-wait-a1", 0.2) is False  # still running: the time ran out

    result: list[bool] = []
    waiter = threading.Thread(target=lambda: result.append(runner.wait_for_change("stack-wait-a1", LONG_POLL_S)))
    waiter.start()
    gated.touch()
    waiter.join(LONG_POLL_S + 10)

    assert result == [True]  # returned because the job ended, not because LONG_POLL_S passed
    assert runner.status("stack-wait-a1").state is JobState.SUCCEEDED


def test_the_local_wait_returns_when_the_job_is_killed_without_an_exit_code(
    local_settings, spec: StackJobSpec, standin, request: pytest.FixtureRequest
) -> None:
    standin("hang")
    runner = runner_from_settings()
    runner.submit(BatchJobRequest.for_stack_job(spec), "stack-killed-a1")
    os.killpg(job_pid("stack-killed-a1", request), signal.SIGKILL)

    assert runner.wait_for_change("stack-killed-a1", LONG_POLL_S) is True
    assert runner.status("stack-killed-a1").state is JobState.FAILED
    with pytest.raises(JobNotFoundError):
        runner.wait_for_change("stack-unknown-a1", 0.1)


def test_waiting_for_a_local_job_takes_one_status_call_after_it_ends(
    prefect_api, long_polls: Settings, spec: StackJobSpec, gated: Path
) -> None:
    """No poll interval elapses after the job ended: one look while it runs, one once it has ended."""
    runner = CountingRunner(runner_from_settings())
    request = BatchJobRequest.for_stack_job(spec)
    runner.submit(request, "stack-flowwait-a1")
    opener = threading.Thread(target=lambda: runner.first_status.wait(60) and gated.touch())
    opener.start()

    @flow(name="wait-for-a-local-job")
    def wait() -> JobStatus:
        return wait_for_gpu_job(SubmittedJob(job_id="stack-flowwait-a1", backend="local", request=request), runner=runner)

    status = wait()
    opener.join(10)

    assert status.state is JobState.SUCCEEDED
    assert runner.statuses == [JobState.RUNNING, JobState.SUCCEEDED]
    assert runner.waits == [(LONG_POLL_S, True)]  # the wait ended with the job, not with its interval


class ScriptedRunner(BatchRunner):
    """A backend that only answers when asked (as Cloud Batch): statuses from a script, waits recorded."""

    def __init__(self, phases: list[str | None]) -> None:
        self.phases = phases
        self.waits: list[float] = []

    def status(self, job_id: str) -> JobStatus:
        phase = self.phases.pop(0)
        if phase is None:
            return JobStatus(job_id=job_id, state=JobState.SUCCEEDED, exit_code=0)
        progress = JobProgress(phase=phase, chunks_done=1, chunks_total=2, updated_at=datetime.now(UTC))
        return JobStatus(job_id=job_id, state=JobState.RUNNING, progress=progress)

    def wait_for_change(self, job_id: str, timeout_s: float) -> bool:
        self.waits.append(timeout_s)
        return False  # the script moves on at once: no test sleeps out an interval

    def submit(self, request: BatchJobRequest, job_id: str) -> str:
        return job_id

    def cancel(self, job_id: str) -> None:
        pass

    def find_jobs(self, labels: dict[str, str]) -> list[str]:
        return []

    def logs_hint(self, job_id: str) -> str:
        return "scripted"


def test_once_the_job_writes_its_outputs_polls_come_at_the_shortest_interval(
    prefect_api, settings: Settings, spec: StackJobSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STACKFLOWS_BATCH__POLL_INITIAL_S", "1")
    monkeypatch.setenv("STACKFLOWS_BATCH__POLL_MAX_S", "30")
    get_settings.cache_clear()
    runner = ScriptedRunner(["loading", "generating", "generating", "writing", "writing", None])
    job = SubmittedJob(job_id="stack-scripted-a1", backend="cloud", request=BatchJobRequest.for_stack_job(spec))

    @flow(name="wait-for-a-scripted-job")
    def wait() -> JobStatus:
        return wait_for_gpu_job(job, runner=runner)

    assert wait().state is JobState.SUCCEEDED
    assert runner.waits == [1.0, 1.5, 2.25, 1.0, 1.0]  # backing off while it generates, fast once it writes
