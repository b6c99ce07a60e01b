"""Where a subflow run sits: the flow runs above it, up to the run the user started.

Prefect links a subflow run to its parent through a task run in the parent (the subflow's stand-in,
``parent_task_run_id``). Job ids are named after the top of this chain (it survives a Retry of the
parent), and progress is shown on every run in it, since the run a user opens is the top one.

A run's place never changes (its parent task run, and that task run's flow run, are fixed when it is
created), so each chain is read from the API once per process: the round, its STACK subflow and the
subflow's progress each asked for it again (ten reads a round, at up to 0.1 s each on a busy server).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client


# flow run id -> the runs above it, nearest first (a top-level run: []), as read from the API
_known_chains: dict[UUID, list[tuple[UUID, UUID]]] = {}


def flow_runs_above(flow_run: Any) -> list[tuple[UUID, UUID]]:
    """``(flow run id, its task run standing for the run below)`` for each run above, nearest first."""
    if flow_run.id in _known_chains:
        return list(_known_chains[flow_run.id])
    above: list[tuple[UUID, UUID]] = []
    below = [flow_run.id]  # the runs whose chains this walk learns: each is a tail of `above`
    with get_client(sync_client=True) as client:
        while flow_run.parent_task_run_id is not None:
            parent_task = client.read_task_run(flow_run.parent_task_run_id)
            if parent_task.flow_run_id is None:
                break
            above.append((parent_task.flow_run_id, parent_task.id))
            if parent_task.flow_run_id in _known_chains:
                above += _known_chains[parent_task.flow_run_id]
                break
            flow_run = client.read_flow_run(parent_task.flow_run_id)
            below.append(flow_run.id)
    for depth, run_id in enumerate(below):
        _known_chains[run_id] = above[depth:]
    return list(above)


def root_flow_run_id(flow_run: Any) -> str:
    """The id of the top-level flow run above ``flow_run`` (itself when it has no parent)."""
    above = flow_runs_above(flow_run)
    return str(above[-1][0] if above else flow_run.id)
