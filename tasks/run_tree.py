"""Where a subflow run sits: the flow runs above it, up to the run the user started.

Prefect links a subflow run to its parent through a task run in the parent (the subflow's stand-in,
``parent_task_run_id``). Job ids are named after the top of this chain (it survives a Retry of the
parent), and progress is shown on every run in it, since the run a user opens is the top one.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client


def flow_runs_above(flow_run: Any) -> list[tuple[UUID, UUID]]:
    """``(flow run id, its task run standing for the run below)`` for each run above, nearest first."""
    above: list[tuple[UUID, UUID]] = []
    with get_client(sync_client=True) as client:
        while flow_run.parent_task_run_id is not None:
            parent_task = client.read_task_run(flow_run.parent_task_run_id)
            if parent_task.flow_run_id is None:
                break
            above.append((parent_task.flow_run_id, parent_task.id))
            flow_run = client.read_flow_run(parent_task.flow_run_id)
    return above


def root_flow_run_id(flow_run: Any) -> str:
    """The id of the top-level flow run above ``flow_run`` (itself when it has no parent)."""
    above = flow_runs_above(flow_run)
    return str(above[-1][0] if above else flow_run.id)
