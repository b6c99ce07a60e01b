"""Flow runs through Prefect's API: trigger, read, cancel and retry, as the dashboard does them.

Everything here takes the app's one ``PrefectClient``; the HTTP layer (``api/app.py``) maps the
exceptions below to status codes.
"""

from __future__ import annotations

import hashlib
import re
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from pydantic import TypeAdapter
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
)
from prefect.client.schemas.objects import Artifact, FlowRun, StateType
from prefect.client.schemas.responses import SetStateStatus
from prefect.client.schemas.sorting import ArtifactSort, FlowRunSort
from prefect.deployments import arun_deployment
from prefect.exceptions import ObjectNotFound
from prefect.states import AwaitingRetry, Cancelled, Cancelling

from api.models import ArtifactLink, Progress, RunState, RunView
from flows.models import AnalysisRequest


class RunNotFound(LookupError):
    pass


class DeploymentNotFound(LookupError):
    pass


class RunConflict(RuntimeError):
    """The run's state does not allow what was asked (cancel a finished run, retry a running one)."""


FINAL_STATES = {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}
MAX_LISTED = 200  # subflows and artifacts read per run: a run makes a handful
NOT_STARTED = {StateType.SCHEDULED, StateType.PAUSED}


def idempotency_key_for(request: AnalysisRequest) -> str:
    """The same request twice is the same run: sha256 of its canonical JSON."""
    return "request-sha256-" + hashlib.sha256(request.model_dump_json().encode()).hexdigest()


async def trigger(client: PrefectClient, deployment: str, request: AnalysisRequest, idempotency_key: str) -> FlowRun:
    """Create the flow run and return at once (``timeout=0``); a repeated key returns the first run."""
    try:
        return await arun_deployment(
            deployment,
            client=client,
            parameters={"request": request.model_dump(mode="json")},
            timeout=0,
            idempotency_key=idempotency_key,
            as_subflow=False,
        )
    except ObjectNotFound as e:
        raise DeploymentNotFound(
            f"deployment '{deployment}' is not registered with the Prefect API; run "
            "`python -m deployments.setup local` (or set STACKFLOWS_API__DEPLOYMENT)"
        ) from e


async def read_run(client: PrefectClient, run_id: UUID) -> FlowRun:
    try:
        return await client.read_flow_run(run_id)
    except ObjectNotFound as e:
        raise RunNotFound(f"no flow run with id {run_id}") from e


async def cancel(client: PrefectClient, run: FlowRun) -> FlowRun:
    """Cancel as the dashboard does: a run not yet started is Cancelled at once; a running one goes
    to Cancelling, the worker stops it and the flow's cancellation hook cancels its GPU job."""
    state_type = run.state.type if run.state else None
    if state_type in FINAL_STATES:
        raise RunConflict(f"run {run.id} is already {run.state.name}; there is nothing to cancel")
    new_state = Cancelled(message="Cancelled through the API") if state_type in NOT_STARTED else Cancelling(
        message="Cancelling through the API"
    )
    await _set_state(client, run.id, new_state, force=False, what="cancel")
    return await client.read_flow_run(run.id)


async def retry(client: PrefectClient, run: FlowRun) -> FlowRun:
    """Retry as the dashboard's Retry button does: AwaitingRetry with ``force=True``. The worker picks
    the run up again; tasks whose results were persisted under a matching cache key are not redone."""
    if run.deployment_id is None:
        raise RunConflict(f"run {run.id} has no deployment, so no worker can pick it up again")
    if run.state is None or run.state.type not in FINAL_STATES:
        current = run.state.name if run.state else "without a state"
        raise RunConflict(f"run {run.id} is {current}; only a finished run can be retried")
    await _set_state(client, run.id, AwaitingRetry(message="Retry through the API"), force=True, what="retry")
    return await client.read_flow_run(run.id)


async def _set_state(client: PrefectClient, run_id: UUID, state, force: bool, what: str) -> None:
    result = await client.set_flow_run_state(run_id, state, force=force)
    if result.status != SetStateStatus.ACCEPT:
        reason = getattr(result.details, "reason", None) or result.status.value
        raise RunConflict(f"Prefect refused to {what} run {run_id}: {reason}")


async def run_artifacts(client: PrefectClient, run_id: UUID) -> list[Artifact]:
    """Artifacts of the run and of its subflow runs (the STACK subflow writes the job's progress)."""
    children = await client.read_flow_runs(
        flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id])),
        sort=FlowRunSort.START_TIME_ASC,
        limit=MAX_LISTED,
    )
    run_ids = [run_id] + [child.id for child in children]
    # Not client.read_artifacts: it sends "flow_runs": null and "task_runs": null, which this
    # Prefect 3.8 server refuses with 422 (and an empty filter there would drop flow-level artifacts).
    body = {
        "artifacts": ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=run_ids)).model_dump(
            mode="json", exclude_unset=True
        ),
        "sort": ArtifactSort.CREATED_DESC.value,
        "limit": MAX_LISTED,
    }
    response = await client.request("POST", "/artifacts/filter", json=body)
    return TypeAdapter(list[Artifact]).validate_python(response.json())


_MARKDOWN_LINK = re.compile(r"^\[[^\]]*\]\((?P<url>[^)]+)\)$")


def _link_of(artifact: Artifact) -> str | None:
    """The target of a link artifact (Prefect 3.8 stores those as markdown that is one link) or image."""
    if artifact.type not in ("link", "image", "markdown") or not isinstance(artifact.data, str):
        return None
    match = _MARKDOWN_LINK.match(artifact.data.strip())
    if match:
        return match.group("url")
    return None if artifact.type == "markdown" else artifact.data


def view(run: FlowRun, ui_url: str, artifacts: list[Artifact] = ()) -> RunView:
    """The run as the API shows it, with the latest progress and links to its artifacts."""
    progress = [a for a in artifacts if a.type == "progress" and isinstance(a.data, (int, float))]
    latest = max(progress, key=lambda a: a.updated or a.created, default=None)
    return RunView(
        id=run.id,
        name=run.name,
        deployment_id=run.deployment_id,
        state=RunState(
            type=run.state.type.value, name=run.state.name, message=run.state.message, timestamp=run.state.timestamp
        )
        if run.state
        else None,
        ui_url=f"{ui_url}/runs/flow-run/{run.id}",
        idempotency_key=run.idempotency_key,
        run_count=run.run_count,
        created=run.created,
        start_time=run.start_time,
        end_time=run.end_time,
        progress=Progress(
            percent=min(100.0, max(0.0, float(latest.data))),
            key=latest.key,
            description=latest.description,
            updated=latest.updated,
        )
        if latest
        else None,
        artifacts=[
            ArtifactLink(
                id=a.id,
                key=a.key,
                type=a.type,
                description=a.description,
                link=_link_of(a),
                ui_url=f"{ui_url}/artifacts/artifact/{a.id}",
                flow_run_id=a.flow_run_id,
            )
            for a in artifacts
            if a.type != "progress"
        ],
    )
