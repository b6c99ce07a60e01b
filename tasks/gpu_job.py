"""Prefect tasks around one GPU batch job: pick its id, submit it once, wait with progress, collect.

Why the pieces look the way they do:

- The job id is ``stack-<root flow run id>-<content hash>-a<attempt>``. The root flow run id stays the
  same when a run is retried from the dashboard, and the content hash is the same for the same
  inputs and parameters, so a retried run finds the job it started. The attempt number moves on
  only when the previous attempt *ended badly* (failed, cancelled): retrying after a Spot
  preemption runs the job again instead of polling the corpse forever. The STACK subflow does that
  by itself for a preempted job (``STACKFLOWS_BATCH__MAX_PREEMPTION_RETRIES`` times), never for a
  job that failed at its work: that one fails the run with its exit code and stderr.
- ``submit_gpu_job`` caches on the job id with a persisted result, so a retried run skips it (the
  UI shows "Cached"); the runners' idempotent submit covers a crash between submit and persist.
- Polling uses NO_CACHE: every attempt must look at the job afresh.
- Progress is shown on the subflow's run *and* on every run above it: a user opens the analysis
  run, and Prefect shows a subflow's artifacts only on the subflow's own page.
"""

from __future__ import annotations

import threading
import time
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactCreate
from prefect.context import FlowRunContext
from pydantic import BaseModel, Field

from clients.batch import (
    BatchJobRequest,
    BatchRunner,
    JobNotFoundError,
    JobState,
    JobStatus,
    runner_from_settings,
)
from clients.batch.base import read_progress
from clients.settings import get_settings
from clients.storage.uris import join_uri
from inference.contract import (
    MANIFEST_FILE,
    SHARD_DIR_PREFIX,
    SUMMARY_FILE,
    JobManifest,
    JobProgress,
    PredictionSummary,
    StackJobSpec,
)
from tasks.report_text import md_inline
from tasks.results import shared_result_storage
from tasks.run_tree import flow_runs_above

MAX_ATTEMPTS = 99
# Set by a caller that wants to know when its GPU job has been submitted (the round starts its
# grounding imports then, not while the submission runs); stack_inference sets the event.
job_submitted: ContextVar[threading.Event | None] = ContextVar("stackflows_job_submitted", default=None)


class JobFailedError(RuntimeError):
    """The GPU job ended without succeeding; the message carries its exit code and stderr tail."""


class JobPreemptedError(JobFailedError):
    """Batch preempted the job's VM more often than STACKFLOWS_BATCH__MAX_PREEMPTION_RETRIES lets a run retry."""


class JobTimeoutError(TimeoutError):
    """The GPU job did not finish within STACKFLOWS_BATCH__WAIT_TIMEOUT_S."""


class OutputsInvalidError(RuntimeError):
    """The job said it succeeded but its outputs do not match its manifest."""


class SubmittedJob(BaseModel):
    """What the submit task persists: enough to poll and collect the job from any worker."""

    job_id: str
    backend: str
    request: BatchJobRequest
    shards: list[int] = Field(
        default_factory=list, description="A sharded job's shards, task k running shards[k]; empty: one whole job."
    )

    def part_prefix(self, shard: int) -> str:
        """Where this job's task for ``shard`` writes its part."""
        return join_uri(self.request.output_prefix, f"{SHARD_DIR_PREFIX}{shard}")


class CollectedOutputs(BaseModel):
    """A finished job's verified outputs: file name -> URI, and the manifest that vouches for them."""

    job_id: str
    output_prefix: str
    manifest_uri: str
    outputs: dict[str, str]
    manifest: JobManifest
    preemptions: int = Field(default=0, ge=0, description="Earlier attempts of this job that Batch preempted.")

    def read_summary(self) -> PredictionSummary:
        """The job's summary for the agent (top genes and shifts per context)."""
        from clients.storage import store_for

        uri = self.outputs[SUMMARY_FILE]
        return PredictionSummary.model_validate_json(store_for(uri).get_bytes(uri))


def shard_count_for(query_cells: int) -> int:
    """How many shards a query of ``query_cells`` cells (before any obs filter) is split into, by
    ``STACKFLOWS_BATCH__SHARD_CELLS``; 1 (no sharding) when that is unset."""
    per_shard = get_settings().batch.shard_cells
    return 1 if per_shard is None else max(1, -(-query_cells // per_shard))


def gpus_at_once(spec: StackJobSpec) -> int:
    """GPUs a job of ``spec`` uses at once: its shards, up to ``STACKFLOWS_BATCH__MAX_PARALLEL_SHARDS``."""
    return min(spec.shard_count, get_settings().batch.max_parallel_shards)


def job_base_id(run_id: str, content_hash: str, kind: str = "stack") -> str:
    """``<kind>-<32 hex of the run id>-<16 hex of the content hash>``: 55 characters for "stack" (a
    sharded run's merge job is kind "merge"), Batch-safe."""
    run_hex = run_id.replace("-", "").lower()[:32]
    return f"{kind}-{run_hex}-{content_hash[:16]}"


def attempt_id(base_id: str, attempt: int) -> str:
    return f"{base_id}-a{attempt}"


def attempt_of(job_id: str) -> tuple[str, int]:
    """``(base id, attempt number)`` of an ``attempt_id``."""
    base_id, attempt = job_id.rsplit("-a", 1)
    return base_id, int(attempt)


def spec_for_job(spec: StackJobSpec, job_id: str) -> StackJobSpec:
    """Attempt 1 writes to the spec's output prefix; a later attempt to a fresh sibling, since a job
    never writes into a used location (the failed attempt left its progress and stderr there)."""
    attempt = attempt_of(job_id)[1]
    if attempt == 1:
        return spec
    return spec.model_copy(update={"output_prefix": f"{spec.output_prefix.rstrip('/')}-attempt{attempt}"})


@task(name="choose-gpu-job-id", cache_policy=NO_CACHE)
def choose_job_id(base_id: str) -> str:
    """This run's job id: the latest attempt unless it ended badly, then the next attempt."""
    runner = runner_from_settings()
    logger = get_run_logger()
    for attempt in range(1, MAX_ATTEMPTS + 1):
        job_id = attempt_id(base_id, attempt)
        try:
            state = runner.status(job_id).state
        except JobNotFoundError:
            return job_id
        if state not in (JobState.FAILED, JobState.CANCELLED):
            logger.info("Found job %s (%s) from an earlier attempt of this run; reusing it", job_id, state.value)
            return job_id
        logger.info("Job %s ended %s; the next attempt gets a new job", job_id, state.value)
    raise JobFailedError(f"{base_id}: {MAX_ATTEMPTS} attempts already ended badly; start a new run instead")


@task(name="check-gpu-job-preempted", cache_policy=NO_CACHE)
def job_preempted(job: SubmittedJob) -> bool:
    """After the wait failed: did Batch take the job's VM away (exit codes 50001-50004, 50006), rather than
    the work fail? Only then is a new attempt the fix; a job that failed at its work would fail again."""
    try:
        status = runner_from_settings().status(job.job_id)
    except JobNotFoundError:
        return False
    if status.preempted:
        get_run_logger().warning("GPU %s: preempted, its work was lost", status.describe())
    return status.preempted


def count_preemptions(job_id: str) -> int:
    """How many attempts of this job, up to and including ``job_id``, Batch preempted (read back from
    the backend, so a crashed and retried run still counts the ones before the crash)."""
    runner = runner_from_settings()
    base_id, last = attempt_of(job_id)
    count = 0
    for attempt in range(1, last + 1):
        try:
            count += runner.status(attempt_id(base_id, attempt)).preempted
        except JobNotFoundError:
            continue
    return count


def preempted_too_often(job_id: str, max_retries: int) -> JobPreemptedError:
    """The error that ends a run whose job kept losing its VM: how often, the bound, and what to change."""
    times = count_preemptions(job_id)
    return JobPreemptedError(
        f"GPU job {attempt_of(job_id)[0]} was preempted {times} time{'s' if times != 1 else ''} (exit codes "
        f"50001-50004 or 50006: Batch took its VM away); this run retried it {max_retries} time"
        f"{'s' if max_retries != 1 else ''} by itself, as STACKFLOWS_BATCH__MAX_PREEMPTION_RETRIES={max_retries} "
        "allows. Raise STACKFLOWS_BATCH__MAX_PREEMPTION_RETRIES, use standard VMs (STACKFLOWS_BATCH__SPOT=false), "
        f"or press Retry to try again. {runner_from_settings().logs_hint(job_id)}"
    )


def shards_spec(spec: StackJobSpec) -> StackJobSpec:
    """The spec a sharded job's tasks run: the parts go beside the outputs, under ``<output_prefix>-shards``."""
    return spec.model_copy(update={"output_prefix": f"{spec.output_prefix.rstrip('/')}-shards"})


def finished_parts(spec: StackJobSpec, base_id: str, attempts: int) -> dict[int, str]:
    """Shard -> the prefix of its finished part (one holding a manifest), in attempts 1..``attempts`` of the
    sharded job ``base_id`` (``spec``: the shards' spec). Read back from storage, so a retry on any worker
    sees what every earlier attempt finished: only the rest runs again."""
    from clients.storage import store_for

    found: dict[int, str] = {}
    for attempt in range(1, attempts + 1):
        attempt_spec = spec_for_job(spec, attempt_id(base_id, attempt))
        for shard in range(spec.shard_count):
            prefix = attempt_spec.shard_uri(shard)
            manifest = join_uri(prefix, MANIFEST_FILE)
            if shard not in found and store_for(manifest).exists(manifest):
                found[shard] = prefix
    return found


def _submit_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    backend = get_settings().batch.backend
    return f"gpu-job-{backend}-{parameters['job_id']}"


@task(name="submit-gpu-job", cache_key_fn=_submit_cache_key, persist_result=True)
def submit_gpu_job(request: BatchJobRequest, job_id: str, shards: list[int] | None = None) -> SubmittedJob:
    """Start the job (or find it started); the persisted result lets a retried run skip this task."""
    runner = runner_from_settings()
    runner.submit(request, job_id)
    what = f" ({request.task_count} tasks: shards {', '.join(map(str, shards))})" if shards else ""
    get_run_logger().info("Submitted GPU job %s%s. %s", job_id, what, runner.logs_hint(job_id))
    return SubmittedJob(job_id=job_id, backend=get_settings().batch.backend, request=request, shards=shards or [])


def submit_task_for_settings():  # noqa: ANN201 (a prefect Task)
    """``submit_gpu_job`` with its results stored where every worker of this deployment can read them."""
    return submit_gpu_job.with_options(result_storage=shared_result_storage())


def poll_intervals(initial_s: float, max_s: float, factor: float = 1.5):  # noqa: ANN201 (a generator)
    """1, 1.5, 2.25, ... seconds up to ``max_s``: quick answers for short jobs, few calls for long ones."""
    interval = initial_s
    while True:
        yield interval
        interval = min(interval * factor, max_s)


def failure_message(status: JobStatus, runner: BatchRunner, shards: list[int] | None = None) -> str:
    """What failed and where its logs are; for a sharded job (``shards``: task k ran shards[k]), which
    shards failed, and that a Retry reruns only the shards without a finished part."""
    lines = [f"GPU {status.describe()}."]
    if shards and status.failed_tasks:
        failed = [shards[k] for k in status.failed_tasks if k < len(shards)]
        lines.append(
            f"Failed shard(s): {', '.join(map(str, failed))} of {len(shards)} in this job; the shards that finished "
            "keep their parts, and a Retry of the run reruns only the shards without one."
        )
    if status.stderr_tail.strip():
        tail = "\n".join(status.stderr_tail.strip().splitlines()[-30:])
        lines.append(f"Last lines of its stderr:\n{tail}")
    lines.append(f"Full logs: {runner.logs_hint(status.job_id)}")
    return "\n".join(lines)


class _ProgressArtifact:
    """Progress artifacts that follow the job's progress.json (updated only on change): one on this
    run, one on each run above it (created against that run and its task run standing for ours)."""

    def __init__(self, job_id: str) -> None:
        description = f"GPU job {job_id}: submitted"
        self.ids = [create_progress_artifact(progress=0.0, description=description)]
        context = FlowRunContext.get()
        above = flow_runs_above(context.flow_run) if context and context.flow_run else []
        if above:
            with get_client(sync_client=True) as client:
                self.ids += [
                    client.create_artifact(
                        ArtifactCreate(
                            type="progress", data=0.0, description=description, flow_run_id=run, task_run_id=stand_in
                        )
                    ).id
                    for run, stand_in in above
                ]
        self.last: tuple[float, str] | None = None

    def update(self, status: JobStatus) -> None:
        percent, text = progress_of(status)
        if (percent, text) != self.last:
            for artifact_id in self.ids:
                update_progress_artifact(artifact_id, progress=percent, description=text)
            self.last = (percent, text)


_PHASES = ["loading", "generating", "embedding", "writing", "done"]


def combined_progress(parts: list[JobProgress | None]) -> JobProgress | None:
    """One progress for a job's tasks (each shard writes its own): chunks and cells summed, the phase the
    least advanced task is in (failed if any failed), and how many shards are done."""
    seen = [p for p in parts if p is not None]
    if not seen:
        return None
    done = sum(p.phase == "done" for p in seen)
    failed = [p for p in seen if p.phase == "failed"]
    phase = "failed" if failed else ("done" if done == len(parts) else min((p.phase for p in seen), key=_PHASES.index))
    if phase == "done" and len(seen) < len(parts):
        phase = "loading"
    message = f"{done}/{len(parts)} shards done" + (f"; {failed[0].message}" if failed else "")
    return JobProgress(
        phase=phase,
        chunks_done=sum(p.chunks_done for p in seen),
        chunks_total=sum(p.chunks_total for p in seen),
        cells_done=sum(p.cells_done for p in seen),
        cells_total=sum(p.cells_total for p in seen),
        message=message,
        updated_at=max(p.updated_at for p in seen),
    )


def progress_of(status: JobStatus) -> tuple[float, str]:
    """Percent done and the artifact's description, as markdown (the UI renders descriptions so): the
    job's message may name a context, i.e. the data's own words, so it is escaped."""
    progress = status.progress
    percent = 100.0 * progress.fraction if progress else 0.0
    text = f"GPU job {status.job_id}: {status.state.value}"
    if progress:
        text += f", {progress.phase} {progress.chunks_done}/{progress.chunks_total} chunks"
        text += f", {progress.cells_done}/{progress.cells_total} cells" if progress.cells_total else ""
        text += f" ({progress.message})" if progress.message else ""
    return percent, md_inline(text)


@task(name="wait-for-gpu-job", cache_policy=NO_CACHE)
def wait_for_gpu_job(job: SubmittedJob, runner: BatchRunner | None = None) -> JobStatus:
    """Poll until the job ends; raise JobFailedError/JobTimeoutError with what a person needs to act.

    Between polls the runner's ``wait_for_change`` waits: the local runner returns the moment the
    job's process ends, so no backoff interval is added after it. Once the job says it is writing
    its outputs, the end is near: polls go back to the shortest interval (Batch too).
    ``runner``: the settings' runner unless given.
    """
    settings = get_settings().batch
    runner = runner or runner_from_settings()
    logger = get_run_logger()
    artifact = _ProgressArtifact(job.job_id)
    timeout_s = settings.wait_timeout_for(job.request.gpu)
    deadline = time.monotonic() + timeout_s
    last_state = None
    backoff = poll_intervals(settings.poll_initial_s, settings.poll_max_s)
    while True:
        try:
            status = runner.status(job.job_id)
        except JobNotFoundError:
            raise JobFailedError(
                f"GPU job {job.job_id} is gone from the {job.backend} backend (deleted?); retry the run to submit it again"
            ) from None
        if job.shards:  # each task writes its own progress beside its part
            status.progress = combined_progress([read_progress(job.part_prefix(i)) for i in job.shards])
        artifact.update(status)
        if status.state is not last_state:
            logger.info("GPU %s", status.describe())
            last_state = status.state
        if status.state is JobState.SUCCEEDED:
            return status
        if status.state in (JobState.FAILED, JobState.CANCELLED):
            raise JobFailedError(failure_message(status, runner, job.shards))
        writing = status.progress is not None and status.progress.phase == "writing"
        interval = settings.poll_initial_s if writing else next(backoff)
        if time.monotonic() + interval > deadline:
            raise JobTimeoutError(
                f"GPU job {job.job_id} is still {status.state.value} after {timeout_s:.0f} s "
                f"({'STACKFLOWS_BATCH__WAIT_TIMEOUT_S' if job.request.gpu else 'STACKFLOWS_BATCH__MERGE_TIMEOUT_S'}"
                f"); the run stops waiting and cancels it. Raise the timeout for larger inputs. "
                f"{runner.logs_hint(job.job_id)}"
            )
        runner.wait_for_change(job.job_id, interval)


def verify_outputs(job_id: str, output_prefix: str) -> CollectedOutputs:
    """Read the manifest and check every output it lists against its sha256."""
    from clients.storage import ObjectNotFoundError, store_for

    manifest_uri = join_uri(output_prefix, MANIFEST_FILE)
    try:
        manifest = JobManifest.model_validate_json(store_for(manifest_uri).get_bytes(manifest_uri))
    except ObjectNotFoundError:
        raise OutputsInvalidError(
            f"GPU job {job_id} succeeded but wrote no {MANIFEST_FILE} under {output_prefix}: its outputs are incomplete"
        ) from None
    outputs = {}
    for name, expected in manifest.outputs.items():
        uri = join_uri(output_prefix, name)
        actual = _sha256_of(uri)
        if actual != expected:
            raise OutputsInvalidError(
                f"{uri}: sha256 {actual or 'missing'} does not match the manifest ({expected}); the output is "
                "damaged or was replaced. Rerun the job into a new output prefix."
            )
        outputs[name] = uri
    return CollectedOutputs(
        job_id=job_id, output_prefix=output_prefix, manifest_uri=manifest_uri, outputs=outputs, manifest=manifest
    )


def _sha256_of(uri: str) -> str | None:
    """sha256 of an object, streaming local files and downloading remote ones to a temporary file."""
    import tempfile

    from clients.storage import ObjectNotFoundError, store_for
    from clients.storage.local import sha256_of_file

    store = store_for(uri)
    try:
        local = store.local_path(uri)
        if local is None:
            with tempfile.TemporaryDirectory() as tmp:
                return sha256_of_file(store.get_file(uri, Path(tmp) / "object"))
        return sha256_of_file(local) if local.is_file() else None
    except ObjectNotFoundError:
        return None


@task(name="collect-gpu-job-outputs", cache_policy=NO_CACHE)
def collect_gpu_job_outputs(job: SubmittedJob) -> CollectedOutputs:
    """The job's outputs, verified against its manifest."""
    collected = verify_outputs(job.job_id, job.request.output_prefix)
    get_run_logger().info("Collected %d outputs of GPU job %s", len(collected.outputs), job.job_id)
    return collected


def cancel_gpu_jobs(labels: dict[str, str]) -> list[str]:
    """Cancel every unfinished job carrying these labels; returns the ids cancelled."""
    runner = runner_from_settings()
    cancelled = []
    for job_id in runner.find_jobs(labels):
        try:
            if not runner.status(job_id).state.is_final:
                runner.cancel(job_id)
                cancelled.append(job_id)
        except JobNotFoundError:
            continue
    return cancelled
