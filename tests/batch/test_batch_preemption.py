"""Spot preemption, through the real google-cloud-batch client against the fake Batch API: a preempted
job (exit code 50001, as Batch reports it in the job's status events) gets a new attempt into a fresh
prefix by itself, a bounded number of times; a job that failed at its work gets none; the report
counts the preemptions."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.flow_engine import run_flow
from prefect.states import AwaitingRetry

from clients.settings import Settings, get_settings
from clients.storage import local_path_of
from flows.analysis_run import analysis_run
from flows.stack_inference import stack_inference
from inference.contract import StackJobSpec
from tasks.gpu_job import JobFailedError, JobPreemptedError, verify_outputs
from tasks.report import AnalysisReport
from tasks.request import AnalysisRequest
from tests.fake_batch_api import FakeBatchApi
from tests.small_inputs import Inputs, make_inputs

REPO = Path(__file__).resolve().parents[2]


def prefixes_created(fake: FakeBatchApi) -> list[str]:
    """The output prefix of every job the client created, in order."""
    return [fake.job_body(job_id)["taskGroups"][0]["taskSpec"]["environment"]["variables"]["STACKFLOWS_OUTPUT_PREFIX"]
            for job_id in fake.created]  # fmt: skip


def max_retries(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    monkeypatch.setenv("STACKFLOWS_BATCH__MAX_PREEMPTION_RETRIES", str(count))
    get_settings.cache_clear()


def test_a_preempted_job_is_retried_by_itself_into_fresh_prefixes(
    prefect_api, cloud_settings: Settings, fake_batch: FakeBatchApi, spec: StackJobSpec, standin
) -> None:
    standin("succeed")  # each preempted attempt leaves its files behind: the next must not write there
    fake_batch.preempt_first(2)

    outputs = stack_inference(spec)

    assert fake_batch.create_requests == 3 and [j[-3:] for j in fake_batch.created] == ["-a1", "-a2", "-a3"]
    prefixes = prefixes_created(fake_batch)
    assert len(set(prefixes)) == 3 and prefixes[0] == spec.output_prefix
    assert outputs.job_id == fake_batch.created[-1] and outputs.output_prefix == prefixes[-1]
    assert outputs.preemptions == 2


def test_a_job_that_failed_at_its_work_is_not_retried(
    prefect_api, cloud_settings: Settings, fake_batch: FakeBatchApi, spec: StackJobSpec, standin
) -> None:
    standin("fail")  # exit code 3: a new attempt would fail the same way

    state = stack_inference(spec, return_state=True)

    assert state.is_failed()
    with pytest.raises(JobFailedError, match="exit code 3") as raised:
        state.result()
    assert not isinstance(raised.value, JobPreemptedError)
    assert fake_batch.create_requests == 1


def test_more_preemptions_than_the_bound_fail_the_run_and_a_retry_still_submits_once(
    prefect_api, cloud_settings: Settings, fake_batch: FakeBatchApi, spec: StackJobSpec, standin, monkeypatch
) -> None:
    standin("succeed")
    max_retries(monkeypatch, 1)
    fake_batch.preempt_first(2)  # more than the run retries by itself

    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run(stack_inference, parameters={"spec": spec.model_dump(mode="json")})
        first = run_flow(stack_inference, flow_run=flow_run, parameters={"spec": spec}, return_type="state")

        assert first.is_failed()
        with pytest.raises(JobPreemptedError) as raised:
            first.result()
        message = str(raised.value)
        assert "was preempted 2 times" in message and "STACKFLOWS_BATCH__MAX_PREEMPTION_RETRIES=1" in message
        assert "Raise STACKFLOWS_BATCH__MAX_PREEMPTION_RETRIES" in message
        assert fake_batch.create_requests == 2

        # The dashboard's Retry: one new attempt, into a fresh prefix, which Batch lets finish.
        client.set_flow_run_state(flow_run.id, AwaitingRetry(), force=True)
        second = run_flow(
            stack_inference, flow_run=client.read_flow_run(flow_run.id), parameters={"spec": spec}, return_type="state"
        )
        assert second.is_completed(), second
        assert fake_batch.create_requests == 3
        assert second.result().preemptions == 2

        # Retried again (say its parent failed after it): the finished job is found, nothing is submitted.
        client.set_flow_run_state(flow_run.id, AwaitingRetry(), force=True)
        third = run_flow(
            stack_inference, flow_run=client.read_flow_run(flow_run.id), parameters={"spec": spec}, return_type="state"
        )
    assert third.is_completed(), third
    assert fake_batch.create_requests == 3 and len(set(prefixes_created(fake_batch))) == 3
    assert third.result().job_id == fake_batch.created[-1]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    return make_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.fixture
def real_job_settings(cloud_settings: Settings, inputs: Inputs, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Cloud Batch on the fake API whose image runs the real STACK job from this checkout."""
    readable = [cloud_settings.data_dir.as_uri(), inputs.h5ad.parent.parent.as_uri()]
    monkeypatch.setenv("STACKFLOWS_API__ALLOWED_URI_PREFIXES", json.dumps(readable))
    monkeypatch.setenv("STACKFLOWS_BATCH__IMAGE", "example.test/stackflows/stack-job:1")  # plays as this venv
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    get_settings.cache_clear()
    return get_settings()


def test_the_report_says_how_many_preemptions_the_gpu_job_took(
    prefect_api, real_job_settings: Settings, fake_batch: FakeBatchApi, inputs: Inputs
) -> None:
    fake_batch.preempt_first(1)  # one: each attempt is a whole STACK job (the counting is tested above)
    request = AnalysisRequest.model_validate(inputs.request_body("How do monocytes look among B cells?", max_iterations=1))

    report = analysis_run.with_options(result_storage=real_job_settings.data_dir / "prefect-results")(request)

    assert fake_batch.create_requests == 2 and len(set(prefixes_created(fake_batch))) == 2
    assert report.job.job_id == fake_batch.created[-1] and report.job.preemptions == 1
    stored = AnalysisReport.model_validate_json(local_path_of(report.outputs["report_json"]).read_text())
    assert stored.job.preemptions == 1 and stored.rounds[0].job_id == fake_batch.created[-1]
    markdown = local_path_of(report.outputs["report_markdown"]).read_text()
    job_section = markdown.split("## GPU job", 1)[1].split("\n## ", 1)[0]
    assert "Spot preemptions: 1" in job_section
    verify_outputs(report.job.job_id, prefixes_created(fake_batch)[-1])  # the attempt that ran to the end
