"""Run one STACK job on a GPU and bring back its verified outputs.

Called as a subflow of the analysis run (or on its own), it

1. names the job after the *root* flow run and the content of the inputs and parameters,
2. submits it once (a dashboard Retry of a crashed run finds the job and polls it),
3. waits, showing the job's progress.json as a progress artifact, here and on the runs above (the
   analysis run's page, which is the one a user opens); a job whose Spot VM was preempted gets a
   new attempt into a fresh prefix, as a manual Retry would, up to
   ``STACKFLOWS_BATCH__MAX_PREEMPTION_RETRIES`` times; a job that failed at its work fails the run,
4. collects the outputs, checking them against the job's manifest, and counts the preemptions.

A spec with ``shard_count`` > 1 (a query larger than ``STACKFLOWS_BATCH__SHARD_CELLS``) runs as one
job whose tasks are its shards (Batch ``task_count``; parallel processes locally), each writing its
own part; then a small merge job joins the parts into the outputs a one-task job writes, so
everything after this subflow reads one dataset. A Retry, or a new attempt after a preemption, runs
only the shards that have no finished part yet: no GPU pays twice for a shard.

Cancelling the run, or the run failing (e.g. timing out), cancels the job: GPU time is not left
running for a run nobody is waiting for. A *crash* does not cancel it, so a Retry can pick it up.
"""

# No `from __future__ import annotations` here: Prefect validates the flow's parameters against its
# annotations, and a flow loaded from its entrypoint (by a runner or worker) cannot resolve them as strings.
from collections.abc import Callable
from typing import Any

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext

from clients.batch import BatchJobRequest
from clients.settings import get_settings
from flows.faults import fault_point, round_step
from inference.contract import MergeSpec, StackJobSpec
from tasks.gpu_job import (
    CollectedOutputs,
    JobFailedError,
    OutputsInvalidError,
    SubmittedJob,
    attempt_of,
    cancel_gpu_jobs,
    choose_job_id,
    collect_gpu_job_outputs,
    count_preemptions,
    finished_parts,
    job_base_id,
    job_preempted,
    job_submitted,
    preempted_too_often,
    shards_spec,
    spec_for_job,
    submit_task_for_settings,
    wait_for_gpu_job,
)
from tasks.run_tree import root_flow_run_id

RUN_LABEL = "stackflows-run"
INPUTS_LABEL = "stackflows-inputs"


def job_labels(run_id: str, spec: StackJobSpec | None = None) -> dict[str, str]:
    labels = {RUN_LABEL: run_id}
    if spec is not None:
        labels[INPUTS_LABEL] = spec.content_hash()[:16]
    return labels


def cancel_gpu_jobs_of_flow_run(flow: Any, flow_run: Any, state: Any) -> None:
    """Flow hook: cancel the GPU jobs this run started. Usable on a parent flow too (all its jobs)."""
    spec = flow_run.parameters.get("spec") if flow.name == stack_inference.name else None
    labels = job_labels(root_flow_run_id(flow_run), StackJobSpec.model_validate(spec) if spec else None)
    cancelled = cancel_gpu_jobs(labels)
    if cancelled:
        _log(f"Run {flow_run.id} ended {state.name}: cancelled GPU jobs {', '.join(cancelled)}")


def _log(message: str) -> None:
    try:
        get_run_logger().info(message)
    except Exception:  # hooks run by a runner have no run context
        print(message)


@flow(
    name="stack-inference",
    on_cancellation=[cancel_gpu_jobs_of_flow_run],
    on_failure=[cancel_gpu_jobs_of_flow_run],
)
def stack_inference(spec: StackJobSpec, round_number: int = 1) -> CollectedOutputs:
    """Run STACK on a GPU for ``spec`` and return its verified outputs (``round_number``: the loop's round)."""
    run_id = root_flow_run_id(FlowRunContext.get().flow_run)
    labels = job_labels(run_id, spec)
    if spec.shard_count == 1:
        base_id = job_base_id(run_id, spec.content_hash())
        _, job = run_to_the_end(
            base_id, lambda job_id: (BatchJobRequest.for_stack_job(spec_for_job(spec, job_id), labels=labels), None),
            run_id, round_number,
        )
        preemptions = count_preemptions(job.job_id)
    else:
        parts, preemptions = run_shards(spec, run_id, labels, round_number)
        merge_base = job_base_id(run_id, spec.content_hash(), kind="merge")

        def merge_request(job_id: str) -> tuple[BatchJobRequest, None]:
            merge = MergeSpec(spec=spec_for_job(spec, job_id), parts=parts)
            request = BatchJobRequest(
                command=merge.to_argv(), output_prefix=merge.spec.output_prefix, labels=labels, gpu=False
            )
            return request, None

        _, job = run_to_the_end(merge_base, merge_request, run_id, round_number)
        preemptions += count_preemptions(job.job_id)
    collected = collect_gpu_job_outputs(job)
    return collected.model_copy(update={"preemptions": preemptions})


RequestFor = Callable[[str], tuple[BatchJobRequest, list[int] | None] | None]


def run_to_the_end(
    base_id: str, request_for: RequestFor, run_id: str, round_number: int
) -> tuple[str, SubmittedJob | None]:
    """Submit job ``base_id`` once and wait for it; after a preemption, a new attempt (``request_for`` builds
    each attempt's request and shards; None: nothing is left to run), up to the settings' bound.
    Returns the last attempt's id and its finished job (None when nothing was left to run)."""
    max_retries = get_settings().batch.max_preemption_retries
    for retry in range(max_retries + 1):
        job_id = choose_job_id(base_id)  # after a preemption: the next attempt, into a fresh prefix
        built = request_for(job_id)
        if built is None:
            return job_id, None
        request, shards = built
        job = submit_task_for_settings()(request, job_id, shards)
        if (submitted := job_submitted.get()) is not None:
            submitted.set()
        fault_point(round_step("submitted", round_number), run_id, how="crash")
        try:
            wait_for_gpu_job(job)
            return job_id, job
        except JobFailedError as failed:
            if not job_preempted(job):
                raise  # the work failed: another attempt would fail the same way
            if retry == max_retries:
                raise preempted_too_often(job_id, max_retries) from failed
            _log(f"GPU job {job_id} was preempted; submitting a new attempt ({retry + 1} of {max_retries})")
    raise AssertionError("unreachable: the last retry returns or raises")


def run_shards(spec: StackJobSpec, run_id: str, labels: dict[str, str], round_number: int) -> tuple[list[str], int]:
    """Every shard's finished part (shard 0, 1, ...) and the preemptions it took: one job per attempt,
    its tasks the shards no earlier attempt finished."""
    parts_spec = shards_spec(spec)
    base_id = job_base_id(run_id, spec.content_hash())
    parallelism = get_settings().batch.max_parallel_shards

    def shard_request(job_id: str) -> tuple[BatchJobRequest, list[int]] | None:
        done = finished_parts(parts_spec, base_id, attempt_of(job_id)[1] - 1)
        missing = [i for i in range(spec.shard_count) if i not in done]
        if not missing:
            return None
        if done:
            _log(f"Shards {sorted(done)} finished in an earlier attempt; GPU job {job_id} runs shards {missing}")
        attempt_spec = spec_for_job(parts_spec, job_id)
        request = BatchJobRequest.for_stack_job(attempt_spec, labels=labels, shards=missing, parallelism=parallelism)
        return request, missing

    last_id, _ = run_to_the_end(base_id, shard_request, run_id, round_number)
    parts = finished_parts(parts_spec, base_id, attempt_of(last_id)[1])
    missing = [i for i in range(spec.shard_count) if i not in parts]
    if missing:
        raise OutputsInvalidError(
            f"GPU job {base_id} ended without a finished part for shard(s) {missing} (no manifest under their "
            "prefixes); retry the run to run those shards again"
        )
    return [parts[i] for i in range(spec.shard_count)], count_preemptions(last_id)
