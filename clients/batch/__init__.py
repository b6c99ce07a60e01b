"""GPU batch jobs: a local process (embedded default) or Google Cloud Batch, behind one interface.

``runner_from_settings()`` picks the runner from ``STACKFLOWS_BATCH__BACKEND``::

    from clients.batch import BatchJobRequest, runner_from_settings

    runner = runner_from_settings()
    runner.submit(BatchJobRequest.for_stack_job(spec), job_id)
    runner.status(job_id).state        # JobState.RUNNING ... SUCCEEDED
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clients.batch.base import (
    BatchJobRequest,
    BatchRunner,
    JobNotFoundError,
    JobState,
    JobStatus,
    check_job_id,
)

__all__ = [
    "BatchJobRequest",
    "BatchRunner",
    "JobNotFoundError",
    "JobState",
    "JobStatus",
    "check_job_id",
    "runner_from_settings",
]

if TYPE_CHECKING:
    from clients.settings import Settings


def runner_from_settings(settings: Settings | None = None) -> BatchRunner:
    """The runner the settings ask for; local jobs keep their state under ``<data_dir>/jobs``."""
    if settings is None:
        from clients.settings import get_settings

        settings = get_settings()
    if settings.batch.backend == "cloud":
        from clients.batch.cloud import CloudBatchRunner

        return CloudBatchRunner(settings.batch)
    from clients.batch.local import LocalProcessRunner

    return LocalProcessRunner(settings.data_dir.resolve() / "jobs", python=settings.batch.local_python)
