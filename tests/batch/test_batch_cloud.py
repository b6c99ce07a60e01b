"""CloudBatchRunner specifics, through the real google-cloud-batch client and the fake Batch API."""

from __future__ import annotations

from clients.batch import BatchJobRequest, JobState, runner_from_settings
from clients.batch.cloud import CloudBatchRunner
from clients.settings import Settings
from google.cloud import batch_v1
from inference.contract import StackJobSpec
from tests.batch.conftest import wait_until
from tests.fake_batch_api import FakeBatchApi


def test_batch_cloud_retries_injected_503s(cloud_settings: Settings, fake_batch: FakeBatchApi, spec, standin) -> None:
    standin("succeed")
    runner = runner_from_settings(cloud_settings)

    fake_batch.fail_next(2, status=503)
    runner.submit(BatchJobRequest.for_stack_job(spec), "stack-retry-a1")
    fake_batch.fail_next(2, status=503)
    status = wait_until(lambda: (s := runner.status("stack-retry-a1")).state.is_final and s)

    assert fake_batch.injected_errors == 4
    assert fake_batch.create_requests == 1 and len(fake_batch.jobs) == 1
    assert status.state is JobState.SUCCEEDED


def test_batch_cloud_conflict_means_already_submitted(cloud_settings, fake_batch: FakeBatchApi, spec, standin) -> None:
    standin("hang")
    runner = runner_from_settings(cloud_settings)

    runner.submit(BatchJobRequest.for_stack_job(spec), "stack-twice-a1")
    runner.submit(BatchJobRequest.for_stack_job(spec), "stack-twice-a1")

    assert fake_batch.create_requests == 2  # the second answered 409 Conflict
    assert len(fake_batch.jobs) == 1
    runner.cancel("stack-twice-a1")


def test_batch_cloud_create_whose_reply_was_lost_is_not_submitted_twice(cloud_settings, fake_batch, spec, standin) -> None:
    """Batch created the job but the reply was a 503: the retried create gets 409, which means done."""
    standin("hang")
    runner = runner_from_settings(cloud_settings)

    fake_batch.lose_next_reply(503)
    assert runner.submit(BatchJobRequest.for_stack_job(spec), "stack-lost-a1") == "stack-lost-a1"

    assert fake_batch.create_requests == 2 and len(fake_batch.jobs) == 1
    assert runner.status("stack-lost-a1").state is JobState.RUNNING
    runner.cancel("stack-lost-a1")


def test_batch_cloud_spot_preemption_is_explained(cloud_settings, fake_batch: FakeBatchApi, spec, standin) -> None:
    standin("hang")
    runner = runner_from_settings(cloud_settings)
    runner.submit(BatchJobRequest.for_stack_job(spec), "stack-spot-a1")
    wait_until(lambda: runner.status("stack-spot-a1").progress)

    fake_batch.preempt("stack-spot-a1")
    status = runner.status("stack-spot-a1")

    assert status.state is JobState.FAILED and status.exit_code == 50001
    assert "preempted" in status.message


def test_batch_cloud_job_asks_for_a_gpu_vm_with_drivers_logs_and_no_retries(cloud_settings, fake_batch, spec, standin) -> None:
    """What the client sent, as Batch receives it (camelCase JSON)."""
    standin("succeed")
    runner = runner_from_settings(cloud_settings)
    runner.submit(BatchJobRequest.for_stack_job(spec, labels={"stackflows-run": "r1"}), "stack-spec-a1")

    body = fake_batch.job_body("stack-spec-a1")
    task = body["taskGroups"][0]["taskSpec"]
    instance = body["allocationPolicy"]["instances"][0]
    assert instance["installGpuDrivers"] is True
    assert instance["policy"]["accelerators"] == [{"type": "nvidia-l4", "count": "1"}]
    assert instance["policy"]["machineType"] == "g2-standard-8"
    assert instance["policy"]["bootDisk"]["sizeGb"] == "100"
    assert task.get("maxRetryCount", 0) == 0  # proto3 JSON omits a zero
    assert task["maxRunDuration"] == "14400s"
    assert body["labels"] == {"stackflows-run": "r1"}
    assert body["logsPolicy"]["destination"] in ("CLOUD_LOGGING", int(batch_v1.LogsPolicy.Destination.CLOUD_LOGGING))
    assert task["runnables"][0]["container"]["imageUri"] == cloud_settings.batch.image
    command = task["runnables"][0]["container"]["commands"]
    assert command[command.index("--") + 1 :] == spec.to_argv()
    wait_until(lambda: runner.status("stack-spec-a1").state.is_final)


def test_batch_cloud_gcs_outputs_mount_the_bucket_beside_the_nvidia_volumes(cloud_settings) -> None:
    gcs_spec = StackJobSpec(
        mode="embed", query_uri="gs://b/q.h5ad", checkpoint_uri="gs://b/m.ckpt", gene_list_uri="gs://b/g.pkl",
        output_prefix="gs://results-bucket/runs/1",
    )
    runner = CloudBatchRunner(cloud_settings.batch)

    job = runner.build_job(BatchJobRequest.for_stack_job(gcs_spec))

    task = job.task_groups[0].task_spec
    assert task.volumes[0].gcs.remote_path == "results-bucket"
    assert task.volumes[0].mount_path == "/mnt/disks/results-bucket"
    assert list(task.runnables[0].container.volumes) == [
        "/var/lib/nvidia/lib64:/usr/local/nvidia/lib64",
        "/var/lib/nvidia/bin:/usr/local/nvidia/bin",
        "/mnt/disks/results-bucket:/mnt/disks/results-bucket",
    ]
    assert task.max_retry_count == 0
    assert job.logs_policy.destination == batch_v1.LogsPolicy.Destination.CLOUD_LOGGING
