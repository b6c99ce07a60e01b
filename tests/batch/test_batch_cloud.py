"""CloudBatchRunner specifics, through the real google-cloud-batch client and the fake Batch API."""

from __future__ import annotations

import shutil

import pytest
from google.cloud import batch_v1

from clients.batch import BatchJobRequest, JobState, runner_from_settings
from clients.settings import Settings, get_settings
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


GCS_SPEC = StackJobSpec(
    mode="embed", query_uri="gs://b/q.h5ad", checkpoint_uri="gs://b/m.ckpt", gene_list_uri="gs://b/g.pkl",
    output_prefix="gs://results-bucket/runs/1",
)


def submitted_body(settings: Settings, fake: FakeBatchApi, job_id: str) -> dict:
    """Submit the gs:// job through the real client and return the Job JSON the fake received.

    The image's `python` is `true` here: the job exits at once and touches no bucket.
    """
    fake.images[settings.batch.image] = shutil.which("true") or "/bin/true"
    runner = runner_from_settings(settings)
    runner.submit(BatchJobRequest.for_stack_job(GCS_SPEC), job_id)
    return fake.job_body(job_id)


def use(monkeypatch: pytest.MonkeyPatch, **batch: str) -> Settings:
    for key, value in batch.items():
        monkeypatch.setenv(f"STACKFLOWS_BATCH__{key.upper()}", value)
    get_settings.cache_clear()
    return get_settings()


def test_batch_cloud_gpu_job_mounts_nothing_and_lists_no_driver_volumes(cloud_settings, fake_batch) -> None:
    """gs:// outputs go through the storage client: no gcsfuse mount, and Batch adds the GPU to the container."""
    body = submitted_body(cloud_settings, fake_batch, "stack-nomount-a1")

    task = body["taskGroups"][0]["taskSpec"]
    assert "volumes" not in task
    assert "volumes" not in task["runnables"][0]["container"]
    assert body["allocationPolicy"]["instances"][0]["installGpuDrivers"] is True


def test_batch_cloud_mounts_a_bucket_only_when_asked(cloud_settings, fake_batch, monkeypatch) -> None:
    settings = use(monkeypatch, gcs_mount_bucket="shared-refs")

    body = submitted_body(settings, fake_batch, "stack-mount-a1")

    task = body["taskGroups"][0]["taskSpec"]
    assert task["volumes"] == [{"gcs": {"remotePath": "shared-refs"}, "mountPath": "/mnt/disks/shared-refs"}]
    # Batch mounts task volumes at the same path by itself; listing any would switch that (and the GPU) off.
    assert "volumes" not in task["runnables"][0]["container"]


@pytest.mark.parametrize(
    ("machine", "accelerator", "setting", "expected"),
    [
        ("g2-standard-8", "nvidia-l4", None, None),  # Batch's default disk type fits G2
        ("a4-highgpu-8g", "nvidia-b200", None, "hyperdisk-balanced"),
        ("a3-ultragpu-8g", "nvidia-h200-141gb", None, "hyperdisk-balanced"),
        ("g4-standard-48", "nvidia-rtx-pro-6000", None, "hyperdisk-balanced"),
        ("a3-highgpu-1g", "nvidia-h100-80gb", None, None),
        ("g2-standard-8", "nvidia-l4", "pd-ssd", "pd-ssd"),  # the setting wins
    ],
)
def test_batch_cloud_boot_disk_type_fits_the_machine_series(
    cloud_settings, fake_batch, monkeypatch, machine: str, accelerator: str, setting: str | None, expected: str | None
) -> None:
    values = {"machine_type": machine, "accelerator_type": accelerator}
    if setting:
        values["boot_disk_type"] = setting
    settings = use(monkeypatch, **values)

    body = submitted_body(settings, fake_batch, "stack-disk-a1")

    boot = body["allocationPolicy"]["instances"][0]["policy"]["bootDisk"]
    assert boot.get("type") == expected
    assert boot["sizeGb"] == "100"


@pytest.mark.parametrize(("code", "preempted"), [(50001, True), (50002, True), (50006, True), (50005, False)])
def test_batch_cloud_exit_code_from_batch_wording_marks_a_preemption(
    cloud_settings, fake_batch: FakeBatchApi, spec, standin, code: int, preempted: bool
) -> None:
    """Batch's job-level events carry the task's exit code only in their text (taskExecution is task-level).
    50005 (past max_run_duration) is no preemption: a new attempt would meet the same limit."""
    standin("hang")
    runner = runner_from_settings(cloud_settings)
    runner.submit(BatchJobRequest.for_stack_job(spec), "stack-words-a1")
    wait_until(lambda: runner.status("stack-words-a1").progress)
    fake_batch.preempt("stack-words-a1")  # kills the process; the events are rewritten below
    job = next(job for name, job in fake_batch.jobs.items() if name.endswith("/jobs/stack-words-a1"))
    with job.lock:
        job.events = [
            *job.events[:2],
            {
                "type": "STATUS_CHANGED",
                "eventTime": job.created,
                "description": (
                    f"Job state is set from RUNNING to FAILED for job {job.name}. Job failed due to task failure. "
                    "Specifically, task with index 0 failed due to the following task event: \"Task state is "
                    f"updated from RUNNING to FAILED on zones/us-central1-a/instances/123 with exit code {code}.\""
                ),
            },
        ]

    status = runner.status("stack-words-a1")

    assert status.state is JobState.FAILED and status.exit_code == code
    assert status.preempted is preempted
    assert ("retries it by itself" in status.message) is preempted
