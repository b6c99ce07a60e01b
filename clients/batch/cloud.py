"""Jobs on Google Cloud Batch: each task on its own GPU VM running the job's container command.

A job has one task, or ``task_count`` tasks (a sharded job's shards: task k reads ``BATCH_TASK_INDEX``,
which Batch sets), at most ``parallelism`` at once; Batch's quota and that bound decide how many GPUs
run together. Each task's job_wrapper saves its own stderr tail (``job_stderr-task<k>.txt``), and the
status of a failed multi-task job lists its tasks (one more API call) to say which failed and how.

Every call goes through the real ``google-cloud-batch`` client over REST, wrapped in an api-core
``Retry`` for transient errors (create/cancel have no default retry). ``create_job`` with our own
job id is the idempotency: a second create of that id answers 409 Conflict, which means "already
submitted". Nothing is remembered in memory; status is read back from Batch and from the files the
job writes beside its outputs (progress.json, job_stderr.txt or job_stderr-task<k>.txt).

    runner = CloudBatchRunner(settings.batch)
    runner.submit(BatchJobRequest.for_stack_job(spec, labels={"flow-run-id": run_id}), "stack-1234")
    runner.status("stack-1234")   # JobStatus(state=RUNNING, progress=...)
"""

from __future__ import annotations

import re
from typing import Any

from google.api_core import exceptions as gexc
from google.api_core.retry import Retry, if_exception_type
from google.cloud import batch_v1
from google.protobuf.duration_pb2 import Duration

from clients.batch.base import (
    STDERR_TAIL_FILE,
    TASK_STDERR_TAIL_FILE,
    BatchJobRequest,
    BatchRunner,
    JobNotFoundError,
    JobState,
    JobStatus,
    check_job_id,
    check_labels,
    read_progress,
    read_stderr_tail,
    report_failed_tasks,
)
from clients.batch.settings import BatchSettings

OUTPUT_PREFIX_ENV = "STACKFLOWS_OUTPUT_PREFIX"
# Machine series whose VMs take no Persistent Disk, only Hyperdisk: a boot disk of Batch's default
# type (pd-balanced) cannot be created on them (Compute Engine's "Machine series support" tables).
HYPERDISK_ONLY_SERIES = frozenset({"a4x", "a4", "g4", "c4", "c4a", "c4d", "n4", "n4a", "n4d", "h4d", "x4", "m4"})
HYPERDISK_ONLY_PREFIXES = ("a3-ultragpu-",)  # A3 Ultra; A3 High, Mega and Edge also take Persistent Disk
HYPERDISK_BOOT = "hyperdisk-balanced"

_State = batch_v1.JobStatus.State
_TaskState = batch_v1.TaskStatus.State
STATES = {
    _State.STATE_UNSPECIFIED: JobState.QUEUED,
    _State.QUEUED: JobState.QUEUED,
    _State.SCHEDULED: JobState.SCHEDULED,
    _State.RUNNING: JobState.RUNNING,
    _State.SUCCEEDED: JobState.SUCCEEDED,
    _State.FAILED: JobState.FAILED,
    _State.CANCELLATION_IN_PROGRESS: JobState.CANCELLING,
    _State.CANCELLED: JobState.CANCELLED,
    # Being deleted: it will produce nothing more, whatever it was doing.
    _State.DELETION_IN_PROGRESS: JobState.CANCELLED,
}

# Exit codes Batch itself uses for a task (https://cloud.google.com/batch/docs/troubleshooting).
BATCH_EXIT_CODES = {
    50001: "the VM was preempted (Spot VM); the run retries it by itself up to STACKFLOWS_BATCH__MAX_PREEMPTION_RETRIES "
    "times, or set STACKFLOWS_BATCH__SPOT=false",
    50002: "the VM stopped reporting to Batch (lost or crashed); the run retries it by itself",
    50003: "the VM rebooted while the task ran; the run retries it by itself",
    50004: "the task stopped responding to Batch; the run retries it by itself",
    50005: "the task ran longer than STACKFLOWS_BATCH__MAX_RUN_DURATION_S; raise it (a retry would meet the same limit)",
    50006: "the VM was recreated while the task ran; the run retries it by itself",
}

TRANSIENT = (
    gexc.ServiceUnavailable,
    gexc.TooManyRequests,
    gexc.GatewayTimeout,
    gexc.InternalServerError,
    gexc.BadGateway,
)


def default_retry(timeout_s: float = 120.0) -> Retry:
    """Retry transient API errors with exponential backoff for up to ``timeout_s``."""
    return Retry(predicate=if_exception_type(*TRANSIENT), initial=0.25, maximum=10.0, multiplier=2.0, timeout=timeout_s)


def batch_client(settings: BatchSettings) -> batch_v1.BatchServiceClient:
    """The sync REST client (the async client has no REST transport; wrap calls in asyncio.to_thread)."""
    options: dict[str, Any] = {}
    if settings.api_endpoint:
        options["api_endpoint"] = settings.api_endpoint
    credentials = None
    if settings.anonymous_credentials:
        from google.auth.credentials import AnonymousCredentials

        credentials = AnonymousCredentials()
    return batch_v1.BatchServiceClient(transport="rest", client_options=options, credentials=credentials)


class CloudBatchRunner(BatchRunner):
    """Google Cloud Batch, one GPU VM per job. Settings: ``STACKFLOWS_BATCH__*``."""

    def __init__(
        self, settings: BatchSettings, client: batch_v1.BatchServiceClient | None = None, retry: Retry | None = None
    ) -> None:
        if not settings.project:
            raise ValueError(
                "STACKFLOWS_BATCH__PROJECT is not set: Cloud Batch needs the GCP project that runs the jobs "
                "(or use STACKFLOWS_BATCH__BACKEND=local)"
            )
        self.settings = settings
        self.client = client or batch_client(settings)
        self.retry = retry or default_retry()
        self.parent = f"projects/{settings.project}/locations/{settings.region}"

    def job_name(self, job_id: str) -> str:
        return f"{self.parent}/jobs/{check_job_id(job_id)}"

    # -- submit -----------------------------------------------------------------------------------

    def build_job(self, request: BatchJobRequest) -> batch_v1.Job:
        """The Batch job for a request: its tasks, the container command, a GPU VM per task, logs kept."""
        s = self.settings
        command = list(request.command)
        tasks = request.task_count
        if s.capture_stderr:  # a multi-task job's tasks each keep their own tail: the wrapper expands {task_index}
            tail_uri = request.output_uri(STDERR_TAIL_FILE if tasks == 1 else TASK_STDERR_TAIL_FILE)
            command = ["python", "-m", "clients.batch.job_wrapper", "--stderr-tail-uri", tail_uri, "--", *command]
        # No container.volumes: Batch then mounts the task's volumes at the same paths and, with
        # install_gpu_drivers, adds the GPU devices and driver libraries to the container itself.
        container = batch_v1.Runnable.Container(image_uri=s.image, commands=command)
        volumes = []
        if s.gcs_mount_bucket:  # only on request: the job reaches gs:// through the storage client
            bucket = s.gcs_mount_bucket
            volumes.append(batch_v1.Volume(gcs=batch_v1.GCS(remote_path=bucket), mount_path=f"/mnt/disks/{bucket}"))
        task = batch_v1.TaskSpec(
            runnables=[batch_v1.Runnable(container=container)],
            volumes=volumes,
            max_run_duration=Duration(seconds=s.max_run_duration_s if request.gpu else s.merge_timeout_s),
            max_retry_count=0,  # a retry is the flow's decision, not Batch's
            environment=batch_v1.Environment(variables={OUTPUT_PREFIX_ENV: request.output_prefix}),
        )
        group = batch_v1.TaskGroup(task_spec=task, task_count=tasks, parallelism=min(request.parallelism or tasks, tasks))
        if tasks > 1:  # else Batch may pack several tasks onto one VM (by CPU and memory), sharing its GPU
            group.task_count_per_node = 1
        return batch_v1.Job(
            task_groups=[group],
            allocation_policy=self._allocation_policy(request.labels, gpu=request.gpu),
            labels=request.labels,
            logs_policy=batch_v1.LogsPolicy(destination=batch_v1.LogsPolicy.Destination.CLOUD_LOGGING),
        )

    @property
    def _gpu(self) -> bool:
        return bool(self.settings.accelerator_type and self.settings.accelerator_count)

    def _allocation_policy(self, labels: dict[str, str], *, gpu: bool = True) -> batch_v1.AllocationPolicy:
        """The VM: the GPU machine type with its accelerators, or (``gpu`` False: a merge job, which reads
        and writes files) the CPU machine type with none."""
        s = self.settings
        Policy = batch_v1.AllocationPolicy
        machine_type = s.machine_type if gpu else s.cpu_machine_type
        instance = Policy.InstancePolicy(
            machine_type=machine_type,
            boot_disk=Policy.Disk(size_gb=s.boot_disk_gb, type_=boot_disk_type(s, machine_type) or ""),
            # a CPU job (a merge) is short and cheap: never Spot, so it never waits for a second attempt
            provisioning_model=Policy.ProvisioningModel.SPOT if s.spot and gpu else Policy.ProvisioningModel.STANDARD,
        )
        accelerated = gpu and self._gpu
        if accelerated:
            instance.accelerators = [Policy.Accelerator(type_=s.accelerator_type, count=s.accelerator_count)]
        policy = Policy(
            instances=[Policy.InstancePolicyOrTemplate(policy=instance, install_gpu_drivers=accelerated)],
            labels=labels,
        )
        if s.service_account:
            policy.service_account = batch_v1.ServiceAccount(email=s.service_account)
        if s.network or s.subnetwork or s.no_external_ip:
            interface = Policy.NetworkInterface(
                network=s.network or "", subnetwork=s.subnetwork or "", no_external_ip_address=s.no_external_ip
            )
            policy.network = Policy.NetworkPolicy(network_interfaces=[interface])
        return policy

    def submit(self, request: BatchJobRequest, job_id: str) -> str:
        check_job_id(job_id)
        check_labels(request.labels)
        try:
            self.client.create_job(
                parent=self.parent, job=self.build_job(request), job_id=job_id, retry=self.retry
            )
        except gexc.Conflict:
            pass  # already submitted (by us earlier, or by a create whose reply was lost)
        return job_id

    # -- status -----------------------------------------------------------------------------------

    def _get(self, job_id: str) -> batch_v1.Job:
        try:
            return self.client.get_job(name=self.job_name(job_id), retry=self.retry)
        except gexc.NotFound:
            raise JobNotFoundError(f"no Cloud Batch job {job_id!r} in {self.parent}") from None

    def status(self, job_id: str) -> JobStatus:
        job = self._get(job_id)
        state = STATES.get(job.status.state, JobState.QUEUED)
        prefix = _output_prefix_of(job)
        tasks = _task_count_of(job)
        status = JobStatus(job_id=job_id, state=state, output_prefix=prefix, task_count=tasks)
        if prefix:
            status.progress = read_progress(prefix)
        exit_code, description = _last_exit(job)
        if state is JobState.SUCCEEDED:
            status.exit_code = 0 if exit_code is None else exit_code
            status.task_exit_codes = dict.fromkeys(range(tasks), 0) if tasks > 1 else {0: status.exit_code}
        elif state is JobState.FAILED:
            status.exit_code = exit_code
            status.message = BATCH_EXIT_CODES.get(exit_code or 0, description or "Cloud Batch reported the job failed")
            if tasks == 1:
                status.stderr_tail = read_stderr_tail(prefix) if prefix else ""
                status.task_exit_codes = {0: exit_code}
            else:
                status.task_exit_codes = self._task_exit_codes(job)
                report_failed_tasks(
                    status,
                    lambda k: read_stderr_tail(prefix, task_index=k) if prefix else "",
                    lambda code: BATCH_EXIT_CODES.get(code or 0, ""),
                )
        elif state in (JobState.CANCELLED, JobState.CANCELLING):
            status.message = description or "cancelled"
        return status

    def _task_exit_codes(self, job: batch_v1.Job) -> dict[int, int | None]:
        """Index -> exit code of each task that ended, from Batch's task list (its events carry the codes)."""
        group = job.task_groups[0].name or f"{job.name}/taskGroups/group0"
        codes: dict[int, int | None] = {}
        for task in self.client.list_tasks(parent=group, retry=self.retry):
            if task.status.state in (_TaskState.SUCCEEDED, _TaskState.FAILED):
                code = next(
                    (e.task_execution.exit_code for e in reversed(task.status.status_events) if "task_execution" in e),
                    0 if task.status.state == _TaskState.SUCCEEDED else None,
                )
                codes[int(task.name.rsplit("/", 1)[-1])] = code
        return codes

    # -- cancel, find, logs -----------------------------------------------------------------------

    def cancel(self, job_id: str) -> None:
        try:
            self.client.cancel_job(name=self.job_name(job_id), retry=self.retry)
        except gexc.NotFound:
            raise JobNotFoundError(f"no Cloud Batch job {job_id!r} in {self.parent}") from None
        except gexc.FailedPrecondition:
            pass  # it already ended: nothing to stop

    def find_jobs(self, labels: dict[str, str]) -> list[str]:
        # Filtered here rather than with a server-side filter expression, whose label syntax Batch
        # does not document; the listing is one page per 100 jobs.
        found = []
        for job in self.client.list_jobs(parent=self.parent, retry=self.retry):
            if labels.items() <= dict(job.labels).items():
                found.append(job.name.rsplit("/", 1)[-1])
        return sorted(found)

    def logs_hint(self, job_id: str) -> str:
        s = self.settings
        return (
            f"Cloud Batch job {job_id}: https://console.cloud.google.com/batch/jobsDetail/regions/{s.region}/jobs/"
            f"{job_id}/logs?project={s.project} (or `gcloud batch jobs describe {job_id} --location {s.region} "
            f"--project {s.project}`)"
        )


def boot_disk_type(settings: BatchSettings, machine_type: str | None = None) -> str | None:
    """The boot disk type to ask for (``machine_type``: the settings' GPU machine unless given): the
    setting, else Hyperdisk where the machine series takes nothing else."""
    if settings.boot_disk_type:
        return settings.boot_disk_type
    machine = (machine_type or settings.machine_type).lower()
    if machine.split("-", 1)[0] in HYPERDISK_ONLY_SERIES or machine.startswith(HYPERDISK_ONLY_PREFIXES):
        return HYPERDISK_BOOT
    return None  # Batch's default (pd-balanced) fits G2, A2, A3 High/Mega/Edge, N1


def _output_prefix_of(job: batch_v1.Job) -> str | None:
    for group in job.task_groups:
        prefix = group.task_spec.environment.variables.get(OUTPUT_PREFIX_ENV)
        if prefix:
            return prefix
    return None


def _task_count_of(job: batch_v1.Job) -> int:
    return max(1, job.task_groups[0].task_count) if job.task_groups else 1


_EXIT_IN_TEXT = re.compile(r"exit code (-?\d+)")


def _last_exit(job: batch_v1.Job) -> tuple[int | None, str]:
    """The latest exit code Batch reported in the job's status events, and that event's text."""
    for event in reversed(list(job.status.status_events)):
        if "task_execution" in event:
            return event.task_execution.exit_code, event.description
        match = _EXIT_IN_TEXT.search(event.description)
        if match:
            return int(match.group(1)), event.description
    events = list(job.status.status_events)
    return None, events[-1].description if events else ""
