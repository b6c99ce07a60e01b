"""Both batch runners, driven through their public interface (the cloud one through the real
google-cloud-batch client against the fake Batch API): success, failure, cancel, idempotent submit."""

from __future__ import annotations

import pytest

from clients.batch import BatchJobRequest, BatchRunner, JobNotFoundError, JobState, runner_from_settings
from clients.batch.local import LocalProcessRunner
from clients.settings import Settings
from inference.contract import StackJobSpec
from tasks.gpu_job import verify_outputs
from tests.batch.conftest import job_pid, process_gone, wait_until
from tests.fake_batch_api import FakeBatchApi


@pytest.fixture(params=["local", "cloud"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def runner(backend: str, request: pytest.FixtureRequest) -> BatchRunner:
    settings: Settings = request.getfixturevalue(f"{backend}_settings")
    return runner_from_settings(settings)


def final_status(runner: BatchRunner, job_id: str):
    return wait_until(lambda: (s := runner.status(job_id)).state.is_final and s, what=f"{job_id} to end")


def test_batch_job_succeeds_and_outputs_are_collected(runner, spec: StackJobSpec, standin) -> None:
    standin("succeed")
    request = BatchJobRequest.for_stack_job(spec, labels={"stackflows-run": "r1"})
    assert runner.submit(request, "stack-ok-a1") == "stack-ok-a1"

    status = final_status(runner, "stack-ok-a1")

    assert status.state is JobState.SUCCEEDED and status.exit_code == 0, status
    assert status.progress is not None and status.progress.phase == "done" and status.progress.fraction == 1.0
    collected = verify_outputs("stack-ok-a1", status.output_prefix)
    assert set(collected.outputs) == {"predictions.h5ad", "summary.json"}
    assert collected.manifest.spec == spec
    assert runner.find_jobs({"stackflows-run": "r1"}) == ["stack-ok-a1"]
    assert runner.find_jobs({"stackflows-run": "other"}) == []


def test_batch_failing_job_reports_exit_code_and_stderr_tail(runner, spec: StackJobSpec, standin) -> None:
    standin("fail")
    runner.submit(BatchJobRequest.for_stack_job(spec), "stack-fail-a1")

    status = final_status(runner, "stack-fail-a1")

    assert status.state is JobState.FAILED
    assert status.exit_code == 3
    assert "stand-in failure: gene list does not match" in status.stderr_tail
    assert "3" in status.describe()


def test_batch_submit_is_idempotent(runner, spec: StackJobSpec, standin, request) -> None:
    standin("hang")
    job = BatchJobRequest.for_stack_job(spec)
    runner.submit(job, "stack-once-a1")
    first_pid = job_pid("stack-once-a1", request)

    assert runner.submit(job, "stack-once-a1") == "stack-once-a1"

    assert job_pid("stack-once-a1", request) == first_pid
    assert runner.find_jobs({}) == ["stack-once-a1"]
    runner.cancel("stack-once-a1")


def test_batch_cancel_stops_the_process(runner, spec: StackJobSpec, standin, request) -> None:
    standin("hang")
    runner.submit(BatchJobRequest.for_stack_job(spec), "stack-cancel-a1")
    wait_until(lambda: runner.status("stack-cancel-a1").progress, what="the job to report progress")
    pid = job_pid("stack-cancel-a1", request)

    runner.cancel("stack-cancel-a1")

    assert final_status(runner, "stack-cancel-a1").state is JobState.CANCELLED
    wait_until(lambda: process_gone(pid), what=f"process {pid} to end")


def test_batch_unknown_job_and_bad_ids_are_refused(runner, spec: StackJobSpec) -> None:
    with pytest.raises(JobNotFoundError):
        runner.status("stack-never-submitted")
    with pytest.raises(ValueError, match="lowercase"):
        runner.submit(BatchJobRequest.for_stack_job(spec), "Stack_Upper")
    with pytest.raises(ValueError, match="label"):
        runner.submit(BatchJobRequest.for_stack_job(spec, labels={"Run": "x"}), "stack-labels")


def test_batch_local_concurrent_submits_of_one_id_start_one_job(local_settings, spec: StackJobSpec, standin) -> None:
    from concurrent.futures import ThreadPoolExecutor

    standin("hang")
    runner = runner_from_settings(local_settings)
    request = BatchJobRequest.for_stack_job(spec)

    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(lambda _: runner.submit(request, "stack-race-a1"), range(4)))

    assert ids == ["stack-race-a1"] * 4
    assert [p.name for p in runner.jobs_dir.iterdir()] == ["stack-race-a1"]  # no leftovers of the losers
    assert runner.status("stack-race-a1").state is JobState.RUNNING
    runner.cancel("stack-race-a1")


def test_batch_local_runner_polls_a_job_another_worker_started(local_settings, spec: StackJobSpec, standin) -> None:
    """A restarted worker (a new runner object, nothing in memory) finds and polls the job."""
    standin("succeed")
    runner_from_settings(local_settings).submit(BatchJobRequest.for_stack_job(spec), "stack-restart-a1")

    fresh = LocalProcessRunner(local_settings.data_dir / "jobs")

    assert final_status(fresh, "stack-restart-a1").state is JobState.SUCCEEDED


def test_batch_local_job_killed_from_outside_is_reported_failed(local_settings, spec: StackJobSpec, standin, request) -> None:
    """E.g. the OOM killer: no exit code gets written, and the status says so."""
    import os
    import signal

    standin("hang")
    runner = runner_from_settings(local_settings)
    runner.submit(BatchJobRequest.for_stack_job(spec), "stack-killed-a1")
    wait_until(lambda: runner.status("stack-killed-a1").progress)

    os.killpg(job_pid("stack-killed-a1", request), signal.SIGKILL)

    status = final_status(runner, "stack-killed-a1")
    assert status.state is JobState.FAILED and status.exit_code is None
    assert "without an exit code" in status.message
