"""The stack_inference subflow against a real (temporary) Prefect API, on both backends."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from uuid import UUID

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentTaskRunId,
    TaskRunFilter,
)
from prefect.client.schemas.sorting import ArtifactSort, TaskRunSort
from prefect.flow_engine import run_flow
from prefect.settings import PREFECT_API_URL
from prefect.states import AwaitingRetry

from clients.batch import JobState, runner_from_settings
from clients.settings import Settings
from flows.stack_inference import stack_inference
from inference.contract import StackJobSpec
from tasks.gpu_job import CollectedOutputs, JobFailedError, JobTimeoutError
from tests.batch.conftest import job_pid, process_gone, wait_until

RUN_FLOW_RUN = Path(__file__).with_name("run_flow_run.py")


@pytest.fixture(params=["local", "cloud"])
def backend_settings(request: pytest.FixtureRequest, prefect_api) -> Settings:
    return request.getfixturevalue(f"{request.param}_settings")


def submitted_jobs(settings: Settings) -> list[str]:
    return runner_from_settings(settings).find_jobs({})


def test_batch_flow_runs_the_job_and_returns_verified_outputs(backend_settings, spec: StackJobSpec, standin) -> None:
    standin("succeed")

    state = stack_inference(spec, return_state=True)

    outputs = state.result()
    assert isinstance(outputs, CollectedOutputs)
    assert outputs.manifest.spec == spec
    assert set(outputs.outputs) == {"predictions.h5ad", "summary.json"}
    progress = progress_artifacts(state.state_details.flow_run_id)
    assert progress and progress[0].data == 100.0, progress


def progress_artifacts(flow_run_id: UUID) -> list:
    """The progress artifacts of one flow run, newest first."""
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])),
            # the sync client sends None for these unless given (Prefect 3.8.8), which the server refuses
            flow_run_filter=FlowRunFilter(), task_run_filter=TaskRunFilter(), limit=50, offset=0,
            sort=ArtifactSort.CREATED_DESC,
        )  # fmt: skip
    return [a for a in artifacts if a.type == "progress"]


def test_batch_flow_progress_shows_on_the_run_above_it(local_settings, prefect_api, spec: StackJobSpec, standin) -> None:
    """A user opens the analysis run, not its stack-inference subflow: the job's progress is there too."""
    standin("succeed")

    @flow(name="parent-of-stack-inference")
    def parent() -> CollectedOutputs:
        return stack_inference(spec)

    state = parent(return_state=True)

    assert state.is_completed(), state
    [shown] = progress_artifacts(state.state_details.flow_run_id)
    assert shown.data == 100.0 and shown.description.startswith("GPU job stack-")
    with get_client(sync_client=True) as client:
        stand_in = client.read_task_run(shown.task_run_id)  # the parent's task run standing for the subflow
        [subflow] = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_task_run_id=FlowRunFilterParentTaskRunId(any_=[stand_in.id]))
        )
    assert stand_in.flow_run_id == state.state_details.flow_run_id
    [own] = progress_artifacts(subflow.id)
    assert own.data == 100.0 and own.description == shown.description


def test_batch_flow_failing_job_fails_the_run_with_exit_code_and_stderr(backend_settings, spec, standin) -> None:
    standin("fail")

    state = stack_inference(spec, return_state=True)

    assert state.is_failed()
    with pytest.raises(JobFailedError) as raised:
        state.result()
    assert "exit code 3" in str(raised.value)
    assert "stand-in failure: gene list does not match" in str(raised.value)


def test_batch_flow_timeout_is_explained_and_cancels_the_job(
    backend_settings, spec, standin, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clients.settings import get_settings

    standin("hang")
    monkeypatch.setenv("STACKFLOWS_BATCH__WAIT_TIMEOUT_S", "1")
    get_settings.cache_clear()

    state = stack_inference(spec, return_state=True)

    with pytest.raises(JobTimeoutError, match="WAIT_TIMEOUT_S"):
        state.result()
    [job_id] = submitted_jobs(backend_settings)
    assert runner_from_settings(backend_settings).status(job_id).state is JobState.CANCELLED


def _flow_run_env() -> dict[str, str]:
    return {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}


def test_batch_flow_retried_after_a_crash_polls_the_same_job(
    backend_settings, spec, standin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request
) -> None:
    gate = tmp_path / "gate"
    standin("gated")
    monkeypatch.setenv("STACKFLOWS_TEST_GATE", str(gate))
    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run(stack_inference, parameters={"spec": spec.model_dump(mode="json")})

        # First attempt: a worker process that dies (SIGKILL) once the job is submitted.
        worker = subprocess.Popen([sys.executable, str(RUN_FLOW_RUN), str(flow_run.id)], env=_flow_run_env())
        try:

            def submit_completed() -> bool:
                runs = client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])),
                    sort=TaskRunSort.EXPECTED_START_TIME_DESC,
                    limit=50,
                )
                return any(r.name.startswith("submit-gpu-job") and r.state and r.state.is_completed() for r in runs)

            wait_until(submit_completed, timeout=90, what="the submit task to complete")
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait()
        [job_id] = submitted_jobs(backend_settings)

        # The dashboard's Retry, then a worker runs the flow run again.
        client.set_flow_run_state(flow_run.id, AwaitingRetry(), force=True)
        gate.touch()
        state = run_flow(
            stack_inference, flow_run=client.read_flow_run(flow_run.id), parameters={"spec": spec}, return_type="state"
        )

    assert state.is_completed(), state
    assert state.result().job_id == job_id
    assert submitted_jobs(backend_settings) == [job_id]
    if backend_settings.batch.backend == "cloud":
        assert request.getfixturevalue("fake_batch").create_requests == 1


def test_batch_flow_cancelled_from_the_dashboard_cancels_its_job(
    backend_settings, spec, standin, request, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Runner (what `serve` and the process worker use) executes the run; Cancel kills it and runs our hook."""
    standin("hang")
    previous_sigterm = signal.getsignal(signal.SIGTERM)  # Runner.start installs its own handler
    try:
        job_id, pid = asyncio.run(_run_and_cancel(backend_settings, spec, lambda job: job_pid(job, request)))
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)

    assert runner_from_settings(backend_settings).status(job_id).state is JobState.CANCELLED
    wait_until(lambda: process_gone(pid), what=f"job process {pid} to end")
    if backend_settings.batch.backend == "cloud":
        fake = request.getfixturevalue("fake_batch")
        assert fake.cancel_requests + fake.delete_requests >= 1


async def _run_and_cancel(settings: Settings, spec: StackJobSpec, pid_of) -> tuple[str, int]:
    from prefect import get_client as get_async_client
    from prefect.runner import Runner
    from prefect.states import Cancelling

    runner = Runner(query_seconds=1, pause_on_shutdown=False)
    deployment_id = await runner.add_flow(stack_inference, name="batch-cancel-test")
    serving = asyncio.create_task(runner.start(webserver=False))
    try:
        async with get_async_client() as client:
            flow_run = await client.create_flow_run_from_deployment(
                deployment_id, parameters={"spec": spec.model_dump(mode="json")}
            )
            job_id = await _until(lambda: _running_job(settings), "the job to run")
            pid = pid_of(job_id)
            await client.set_flow_run_state(flow_run.id, Cancelling(message="Cancelled from the dashboard"))

            async def cancelled() -> bool:
                return (await client.read_flow_run(flow_run.id)).state.is_cancelled()

            await _until(lambda: runner_from_settings(settings).status(job_id).state.is_final, "the job to end", 60)
            await _until_async(cancelled, "the flow run to be Cancelled")
    finally:
        await runner.astop()
        serving.cancel()
    return job_id, pid


def _running_job(settings: Settings) -> str | None:
    runner = runner_from_settings(settings)
    for job_id in runner.find_jobs({}):
        if runner.status(job_id).progress is not None:
            return job_id
    return None


async def _until(condition, what: str, timeout: float = 90.0):
    return await asyncio.to_thread(wait_until, condition, timeout, what)


async def _until_async(condition, what: str, timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


def test_batch_flow_runs_the_real_stack_job_on_cloud_batch(
    prefect_api, cloud_settings, real_job_spec: StackJobSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """flow -> CloudBatchRunner -> google-cloud-batch REST -> fake Batch -> job_wrapper -> inference.stack_job."""
    from clients.settings import get_settings

    monkeypatch.setenv("STACKFLOWS_BATCH__IMAGE", "example.test/stackflows/stack-job:1")  # plays as this venv
    get_settings.cache_clear()

    outputs = stack_inference(real_job_spec)

    assert outputs.manifest.model_trained is False
    assert outputs.manifest.predictions_shape[1] == 24
    assert set(outputs.outputs) >= {"predictions.h5ad", "summary.json"}


def test_batch_flow_retry_after_a_failed_job_runs_a_new_attempt(local_settings, prefect_api, spec, standin) -> None:
    standin("fail")
    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run(stack_inference, parameters={"spec": spec.model_dump(mode="json")})
        first = run_flow(stack_inference, flow_run=flow_run, parameters={"spec": spec}, return_type="state")
        assert first.is_failed()

        standin("succeed")  # say the job failed for a passing reason (a preempted VM)
        client.set_flow_run_state(flow_run.id, AwaitingRetry(), force=True)
        second = run_flow(
            stack_inference, flow_run=client.read_flow_run(flow_run.id), parameters={"spec": spec}, return_type="state"
        )

    assert second.is_completed(), second
    first_job, second_job = submitted_jobs(local_settings)
    assert first_job.endswith("-a1") and second_job.endswith("-a2")
    outputs = second.result()
    assert outputs.job_id == second_job
    assert outputs.output_prefix == spec.output_prefix + "-attempt2"  # the failed attempt's location is left as it was
