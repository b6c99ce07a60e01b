"""What a run's page in the Prefect UI has to show: its artifacts, by key."""

from __future__ import annotations

from uuid import UUID

from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, TaskRunFilter


def run_artifacts(flow_run_id: UUID | str) -> dict:
    """The run's artifacts by key (keyless ones left out)."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(str(flow_run_id))])),
            # the sync client sends None for these unless given (Prefect 3.8.8), which the server refuses
            flow_run_filter=FlowRunFilter(), task_run_filter=TaskRunFilter(), limit=50, offset=0,
        )  # fmt: skip
    return {a.key: a for a in found if a.key}
