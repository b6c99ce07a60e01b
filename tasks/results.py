"""Where task results are persisted: storage every worker of a deployment can read.

A dashboard Retry skips a task only when it finds that task's persisted result, and the retry may
run in another container than the first attempt. So results go to a shared place: a Prefect block
(e.g. ``gcs-bucket/stackflows-results``) in the cloud, ``<data_dir>/prefect-results`` on one machine.
"""

from __future__ import annotations

from pathlib import Path

from clients.settings import Settings, get_settings


def shared_result_storage(settings: Settings | None = None) -> str | Path:
    """A block slug (``STACKFLOWS_BATCH__RESULT_STORAGE``) or the local results directory."""
    settings = settings or get_settings()
    return settings.batch.result_storage or Path(settings.data_dir).resolve() / "prefect-results"
