"""The batch runner interface: run one job command somewhere with a GPU, poll it, cancel it.

A job is named by a caller-chosen id (lowercase, at most 63 characters: Cloud Batch's rule, kept
everywhere so a job id means the same on every backend). Submitting an id that already exists
returns it instead of starting a second job: that is what makes a retried flow run safe.

A request with ``task_count`` N > 1 is one job of N tasks (a sharded job's shards): each runs the
same command with ``BATCH_TASK_INDEX`` 0..N-1 (Cloud Batch sets it; the local runner does the same),
at most ``parallelism`` at once. A runner retries no task: a retry is a new job (an attempt) that
lists only the shards still missing, so a job's status only has to say which tasks failed.
"""

from __future__ import annotations

import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from enum import Enum

from pydantic import BaseModel, Field

from clients.storage.uris import join_uri
from inference.contract import MANIFEST_FILE, PROGRESS_FILE, JobProgress, StackJobSpec

JOB_ID_PATTERN = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
STDERR_TAIL_FILE = "job_stderr.txt"  # written under the output prefix by clients.batch.job_wrapper
# A multi-task job's task k keeps its own tail (the wrapper expands {task_index} from BATCH_TASK_INDEX).
TASK_STDERR_TAIL_FILE = "job_stderr-task{task_index}.txt"
STDERR_TAIL_BYTES = 8192
_TAIL_LINES = 30  # what a failure message shows of a job's stderr, shared among a multi-task job's failed tasks
_TAIL_TASKS = 4  # failed tasks whose stderr that shows
# Cloud Batch's exit codes for a task whose Spot VM was preempted or whose host went away (50001-50004,
# 50006): the work did not fail, its machine did, so a new attempt is the fix. 50005 (the task ran past
# max_run_duration) is not among them: a new attempt would run into the same limit.
PREEMPTION_EXIT_CODES = frozenset({50001, 50002, 50003, 50004, 50006})


class JobNotFoundError(LookupError):
    """No job with that id on this backend."""


class JobState(str, Enum):
    QUEUED = "QUEUED"
    SCHEDULED = "SCHEDULED"
    RUNNING = "RUNNING"
    CANCELLING = "CANCELLING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def is_final(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class BatchJobRequest(BaseModel):
    """What to run: the command, where its outputs (and progress file) go, and labels to find it by."""

    command: list[str] = Field(min_length=1, description="argv; a leading `python` is the runner's interpreter.")
    output_prefix: str = Field(description="Where the job writes its outputs, progress and manifest.")
    labels: dict[str, str] = Field(default_factory=dict, description="Lowercase key/values, e.g. the flow run id.")
    task_count: int = Field(
        default=1, ge=1, le=10_000,
        description="Tasks of this one job, each running the command with BATCH_TASK_INDEX=0, 1, ... (shards).",
    )
    parallelism: int | None = Field(default=None, ge=1, description="At most this many tasks at once; None: all.")
    gpu: bool = Field(
        default=True,
        description="Run on the GPU machine; False: on the settings' CPU machine type, no accelerator (a merge job).",
    )

    @classmethod
    def for_stack_job(
        cls, spec: StackJobSpec, labels: dict[str, str] | None = None, *,
        shards: list[int] | None = None, parallelism: int | None = None,
    ) -> BatchJobRequest:
        """The request for a job; with ``shards``, one task per listed shard of a sharded spec."""
        return cls(
            command=spec.to_argv(shards), output_prefix=spec.output_prefix, labels=labels or {},
            task_count=len(shards) if shards else 1, parallelism=parallelism,
        )

    def output_uri(self, name: str) -> str:
        return join_uri(self.output_prefix, name)

    @property
    def progress_uri(self) -> str:
        return self.output_uri(PROGRESS_FILE)

    @property
    def manifest_uri(self) -> str:
        return self.output_uri(MANIFEST_FILE)


class JobStatus(BaseModel):
    """One look at a job. ``message`` says why it ended where the backend knows.

    A job of several tasks (shards) is SUCCEEDED when all succeeded and FAILED once all ended and any
    failed; ``exit_code`` is then the lowest-numbered failed task's, ``task_exit_codes`` has each
    ended task's code (what a retry of only the failed shards needs), ``message`` and ``stderr_tail``
    name the failed tasks.
    """

    job_id: str
    state: JobState
    exit_code: int | None = None
    message: str = ""
    stderr_tail: str = ""
    progress: JobProgress | None = None
    output_prefix: str | None = None
    task_count: int = Field(default=1, ge=1, description="Tasks of the job (BATCH_TASK_INDEX 0..task_count-1).")
    task_exit_codes: dict[int, int | None] = Field(
        default_factory=dict,
        description="Task index -> exit code, for the tasks known to have ended (None: failed without one). "
        "The cloud runner knows them once the job ended; the local one as each task ends.",
    )

    @property
    def failed_tasks(self) -> list[int]:
        """Indexes (BATCH_TASK_INDEX) of the tasks that ended and failed, in order."""
        return sorted(k for k, code in self.task_exit_codes.items() if code != 0)

    @property
    def preempted(self) -> bool:
        """The job failed because Batch took its machine away (Spot preemption), not because of the work:
        every failed task was preempted."""
        if self.state is not JobState.FAILED:
            return False
        codes = [self.task_exit_codes[k] for k in self.failed_tasks] or [self.exit_code]
        return all(code in PREEMPTION_EXIT_CODES for code in codes)

    def describe(self) -> str:
        """One line for logs and errors."""
        details = [f"exit code {self.exit_code}"] if self.exit_code is not None else []
        details += [self.message] if self.message else []
        return f"job {self.job_id} {self.state.value}" + (f" ({'; '.join(details)})" if details else "")


def report_failed_tasks(
    status: JobStatus, tail_of: Callable[[int], str], explain: Callable[[int | None], str] | None = None
) -> None:
    """Fill a FAILED multi-task status from its ``task_exit_codes``: ``exit_code`` (the lowest-numbered
    failed task's), a ``message`` naming each failed task and its code (``explain`` adds the backend's
    words for a code), and a ``stderr_tail`` with the last lines of each failed task's own tail."""
    failed = status.failed_tasks
    if not failed:
        return
    status.exit_code = status.task_exit_codes[failed[0]]

    def one(k: int) -> str:
        code = status.task_exit_codes[k]
        words = explain(code) if explain else ""
        return f"task {k} exit code {code}" + (f" ({words})" if words else "")

    status.message = f"{len(failed)} of {status.task_count} tasks failed: " + "; ".join(one(k) for k in failed)
    shown = failed[:_TAIL_TASKS]
    headers = len(shown) + (len(failed) > len(shown))
    lines_each = max(3, (_TAIL_LINES - headers) // len(shown))  # so that the last 30 lines keep every header
    sections = []
    for k in shown:
        tail = tail_of(k).strip().splitlines()[-lines_each:]
        header = f"--- task {k} (exit code {status.task_exit_codes[k]}) ---"
        sections.append(header + "\n" + ("\n".join(tail) or "(no stderr saved)"))
    if len(failed) > len(shown):
        sections.append(f"--- and {len(failed) - len(shown)} more failed task(s) ---")
    status.stderr_tail = "\n".join(sections)


def check_job_id(job_id: str) -> str:
    if not JOB_ID_PATTERN.match(job_id):
        raise ValueError(
            f"job id {job_id!r} is not valid: use 1-63 lowercase letters, digits and '-', starting with a "
            "letter and not ending with '-' (Cloud Batch's rule)"
        )
    return job_id


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    """Cloud Batch label rules, applied everywhere so a job that runs locally also submits to the cloud."""
    for key, value in labels.items():
        if not re.match(r"^[a-z][a-z0-9_-]{0,62}$", key) or not re.match(r"^[a-z0-9_-]{0,63}$", value):
            raise ValueError(
                f"job label {key}={value!r} is not valid: keys start with a lowercase letter, keys and values use "
                "at most 63 lowercase letters, digits, '_' or '-'"
            )
    return labels


class BatchRunner(ABC):
    """One place jobs run. Implementations keep no state in memory: everything is read back from the backend."""

    @abstractmethod
    def submit(self, request: BatchJobRequest, job_id: str) -> str:
        """Start the job unless a job with this id exists already; returns the id either way."""

    @abstractmethod
    def status(self, job_id: str) -> JobStatus:
        """The job's state now; raises JobNotFoundError for an unknown id."""

    @abstractmethod
    def cancel(self, job_id: str) -> None:
        """Stop the job (no-op when it already ended); raises JobNotFoundError for an unknown id."""

    @abstractmethod
    def find_jobs(self, labels: dict[str, str]) -> list[str]:
        """Ids of the jobs carrying all these labels (e.g. every job of one flow run)."""

    @abstractmethod
    def logs_hint(self, job_id: str) -> str:
        """Where a person finds the job's full logs."""

    def wait_for_change(self, job_id: str, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the job to end; True when it did (or may have) before the time was up.

        A poller calls this between status calls instead of sleeping. Here it just sleeps (a remote
        backend is only known by asking it again); a runner that can see its job end returns at once.
        """
        time.sleep(timeout_s)
        return False


def read_progress(output_prefix: str) -> JobProgress | None:
    """The job's last ``progress.json``, or None before it wrote one (or if it is unreadable)."""
    from clients.storage import ObjectNotFoundError, store_for

    uri = join_uri(output_prefix, PROGRESS_FILE)
    try:
        return JobProgress.model_validate_json(store_for(uri).get_bytes(uri))
    except (ObjectNotFoundError, ValueError):
        return None


def read_stderr_tail(output_prefix: str, task_index: int | None = None) -> str:
    """What clients.batch.job_wrapper saved of the job's stderr (of task ``task_index`` of a multi-task
    job), or '' if nothing was saved."""
    from clients.storage import ObjectNotFoundError, store_for

    name = STDERR_TAIL_FILE if task_index is None else TASK_STDERR_TAIL_FILE.replace("{task_index}", str(task_index))
    uri = join_uri(output_prefix, name)
    try:
        return store_for(uri).get_bytes(uri).decode(errors="replace")
    except ObjectNotFoundError:
        return ""
