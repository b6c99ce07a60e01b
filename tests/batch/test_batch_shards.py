"""A sharded STACK job end to end, with the real job: one Batch job whose tasks are the shards (the real
google-cloud-batch client against the fake Batch API; parallel processes on the local runner), then a merge
job, and outputs equal to the same spec run in one process bit for bit. A Retry after one shard failed
runs that shard alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.flow_engine import run_flow
from prefect.states import AwaitingRetry

from clients.settings import Settings, get_settings
from clients.storage import local_path_of
from flows.stack_inference import stack_inference
from inference.contract import DE_FILE, GENE_MEANS_FILE, PREDICTIONS_FILE, StackJobSpec
from tasks.gpu_job import CollectedOutputs, JobFailedError
from tests.fake_batch_api import FakeBatchApi

REPO = Path(__file__).resolve().parents[2]
JOB_IMAGE = "example.test/stackflows/stack-job:1"  # the fake plays any unknown image as this venv


@pytest.fixture
def sharded_spec(real_job_spec: StackJobSpec) -> StackJobSpec:
    return real_job_spec.model_copy(update={"shard_count": 3})


@pytest.fixture
def one_process(sharded_spec: StackJobSpec, tmp_path: Path) -> Path:
    """The same spec run as one plain job, in one process: what every sharded run must equal."""
    spec = sharded_spec.model_copy(update={"output_prefix": (tmp_path / "one-process").as_uri()})
    subprocess.run([sys.executable, *spec.to_argv()[1:]], cwd=REPO, check=True, capture_output=True)
    return tmp_path / "one-process"


@pytest.fixture
def cloud_job(cloud_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("STACKFLOWS_BATCH__IMAGE", JOB_IMAGE)
    get_settings.cache_clear()
    return get_settings()


@pytest.fixture
def local_job(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The local process runner running the real job with this venv's interpreter."""
    monkeypatch.setenv("STACKFLOWS_BATCH__BACKEND", "local")
    monkeypatch.setenv("STACKFLOWS_BATCH__MAX_PARALLEL_SHARDS", "3")
    get_settings.cache_clear()
    return get_settings()


def assert_same_outputs(collected: CollectedOutputs, reference: Path) -> None:
    """Predictions equal bit for bit (the sparse arrays themselves), obs equal, DE and gene means equal."""
    merged = ad.read_h5ad(local_path_of(collected.outputs[PREDICTIONS_FILE]))
    plain = ad.read_h5ad(reference / PREDICTIONS_FILE)
    for part in ("data", "indices", "indptr"):
        assert np.array_equal(getattr(merged.X, part), getattr(plain.X, part)), part
    assert merged.X.dtype == plain.X.dtype == np.float32
    pd.testing.assert_frame_equal(merged.obs, plain.obs)
    for name in (DE_FILE, GENE_MEANS_FILE):
        pd.testing.assert_frame_equal(
            pd.read_parquet(local_path_of(collected.outputs[name])), pd.read_parquet(reference / name)
        )


def task_spec(fake: FakeBatchApi, job_id: str) -> dict:
    return fake.job_body(job_id)["taskGroups"][0]


def test_a_sharded_job_runs_its_shards_as_tasks_of_one_batch_job_then_merges(
    prefect_api, cloud_job: Settings, fake_batch: FakeBatchApi, sharded_spec: StackJobSpec, one_process: Path
) -> None:
    collected = stack_inference(sharded_spec)

    shards_job, merge_job = fake_batch.created
    assert shards_job.startswith("stack-") and merge_job.startswith("merge-")
    group = task_spec(fake_batch, shards_job)
    assert int(group["taskCount"]) == 3 and int(group["parallelism"]) == 2  # STACKFLOWS_BATCH__MAX_PARALLEL_SHARDS
    assert "--shards" in (command := group["taskSpec"]["runnables"][0]["container"]["commands"])
    assert command[command.index("--shards") + 1] == "0,1,2"
    assert int(task_spec(fake_batch, merge_job).get("taskCount", 1)) == 1
    gpu_vm, merge_vm = (fake_batch.job_body(j)["allocationPolicy"]["instances"][0] for j in (shards_job, merge_job))
    assert gpu_vm["policy"]["machineType"] == "g2-standard-8" and gpu_vm["installGpuDrivers"] is True
    assert gpu_vm["policy"]["accelerators"] == [{"type": "nvidia-l4", "count": "1"}]
    # the merge reads and writes files: a CPU machine (STACKFLOWS_BATCH__CPU_MACHINE_TYPE), no GPU
    assert merge_vm["policy"]["machineType"] == "n2-highmem-8" and "accelerators" not in merge_vm["policy"]
    assert not merge_vm.get("installGpuDrivers", False)
    assert merge_vm["policy"].get("provisioningModel", "STANDARD") in ("STANDARD", 1)  # never Spot: it runs once
    merge_task = task_spec(fake_batch, merge_job)["taskSpec"]
    assert merge_task["maxRunDuration"] == "3600s"  # STACKFLOWS_BATCH__MERGE_TIMEOUT_S
    assert collected.job_id == merge_job and collected.output_prefix == sharded_spec.output_prefix
    assert collected.manifest.merged_from == [f"{sharded_spec.output_prefix}-shards/shard-{i}" for i in range(3)]
    assert_same_outputs(collected, one_process)


def test_a_retry_after_one_shard_failed_runs_only_that_shard(
    prefect_api, cloud_job: Settings, fake_batch: FakeBatchApi, sharded_spec: StackJobSpec, one_process: Path
) -> None:
    fake_batch.fail_task_of_next_job(1)  # shard 1's task exits 1; shards 0 and 2 finish their parts

    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run(stack_inference, parameters={"spec": sharded_spec.model_dump(mode="json")})
        first = run_flow(stack_inference, flow_run=flow_run, parameters={"spec": sharded_spec}, return_type="state")
        assert first.is_failed()
        assert fake_batch.created == [fake_batch.created[0]]  # no merge of an incomplete set
        with pytest.raises(JobFailedError, match=r"Failed shard\(s\): 1 of 3 in this job.*reruns only the shards"):
            first.result()

        # The dashboard's Retry: a new attempt with shard 1 alone, into a fresh prefix, then the merge.
        client.set_flow_run_state(flow_run.id, AwaitingRetry(), force=True)
        second = run_flow(
            stack_inference, flow_run=client.read_flow_run(flow_run.id), parameters={"spec": sharded_spec},
            return_type="state",
        )
    assert second.is_completed(), second
    first_job, retry_job, merge_job = fake_batch.created
    assert first_job.endswith("-a1") and retry_job.endswith("-a2") and merge_job.startswith("merge-")
    group = task_spec(fake_batch, retry_job)
    assert int(group.get("taskCount", 1)) == 1
    command = group["taskSpec"]["runnables"][0]["container"]["commands"]
    assert command[command.index("--shards") + 1] == "1"
    collected = second.result()
    prefix = sharded_spec.output_prefix
    assert collected.manifest.merged_from == [
        f"{prefix}-shards/shard-0", f"{prefix}-shards-attempt2/shard-1", f"{prefix}-shards/shard-2"
    ]
    assert_same_outputs(collected, one_process)


def test_a_sharded_job_on_the_local_runner_runs_its_shards_as_parallel_processes(
    prefect_api, local_job: Settings, sharded_spec: StackJobSpec, one_process: Path
) -> None:
    collected = stack_inference(sharded_spec)

    jobs = sorted(p.name for p in (local_job.data_dir / "jobs").iterdir() if not p.name.startswith("."))
    assert [j.split("-")[0] for j in jobs] == ["merge", "stack"]
    shard_job = local_job.data_dir / "jobs" / jobs[1]
    assert '"task_count": 3' in (shard_job / "request.json").read_text()
    assert_same_outputs(collected, one_process)


def test_a_sharded_jobs_progress_sums_its_shards_and_waits_for_the_slowest() -> None:
    from datetime import UTC, datetime

    from inference.contract import JobProgress
    from tasks.gpu_job import combined_progress

    def progress(phase: str, done: int, total: int, message: str = "") -> JobProgress:
        return JobProgress(phase=phase, chunks_done=done, chunks_total=total, cells_done=10 * done,
                           cells_total=10 * total, message=message, updated_at=datetime.now(UTC))

    both = combined_progress([progress("done", 4, 4), progress("generating", 1, 4), None])
    assert (both.phase, both.chunks_done, both.chunks_total, both.cells_done) == ("generating", 5, 8, 50)
    assert both.message == "1/3 shards done"
    assert combined_progress([progress("done", 4, 4), None]).phase == "loading"  # one shard has not begun
    assert combined_progress([progress("done", 4, 4), progress("done", 4, 4)]).fraction == 1.0
    failed = combined_progress([progress("done", 4, 4), progress("failed", 0, 4, "InputError: no cells")])
    assert failed.phase == "failed" and "InputError: no cells" in failed.message
    assert combined_progress([None, None]) is None


def test_an_analysis_run_over_a_query_larger_than_a_shard_reports_one_dataset(
    prefect_api, local_job: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """120 cells with STACKFLOWS_BATCH__SHARD_CELLS=50: three shards, one merge, and a report that reads
    the merged outputs like any other (the query's 40 monocytes are what the shards split)."""
    import json

    from flows.analysis_run import analysis_run
    from tasks.request import AnalysisRequest
    from tests.small_inputs import make_inputs

    inputs = make_inputs(tmp_path / "inputs")
    readable = [local_job.data_dir.as_uri(), inputs.h5ad.parent.parent.as_uri()]
    monkeypatch.setenv("STACKFLOWS_API__ALLOWED_URI_PREFIXES", json.dumps(readable))
    monkeypatch.setenv("STACKFLOWS_BATCH__SHARD_CELLS", "50")
    get_settings.cache_clear()
    request = AnalysisRequest.model_validate(inputs.request_body("How do monocytes look among B cells?", max_iterations=1))

    report = analysis_run.with_options(result_storage=local_job.data_dir / "prefect-results")(request)

    jobs = sorted(p.name for p in (local_job.data_dir / "jobs").iterdir() if not p.name.startswith("."))
    assert [j.split("-")[0] for j in jobs] == ["merge", "stack"]
    assert report.job.job_id == jobs[0] and report.rounds[0].query_cell_count == 40
    assert report.job.shards == 3 and report.job.device == "cpu" and report.job.merge_seconds is not None
    markdown = local_path_of(report.outputs["report_markdown"]).read_text()
    assert "- shards: 3 (tasks of one job;" in markdown.split("## GPU job", 1)[1].split("\n## ", 1)[0]
    predictions = ad.read_h5ad(local_path_of(report.outputs["predictions"]), backed="r")
    assert predictions.n_obs == 40 and predictions.obs["query_cell"].is_unique  # one context, every cell once
