"""Flow runs through Prefect's API: trigger, read, cancel and retry, as the dashboard does them.

Everything here takes the app's one ``PrefectClient``; the HTTP layer (``api/app.py``) maps the
exceptions below to status codes.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import DeploymentFlowRunCreate
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterType,
    FlowFilter,
    FlowFilterId,
    FlowRunFilter,
    FlowRunFilterIdempotencyKey,
    FlowRunFilterParentFlowRunId,
)
from prefect.client.schemas.objects import Artifact, FlowRun, StateType
from prefect.client.schemas.responses import DeploymentResponse, SetStateStatus
from prefect.client.schemas.sorting import ArtifactSort, FlowRunSort
from prefect.exceptions import ObjectNotFound
from prefect.states import (
    AwaitingRetry,
    Cancelled,
    Cancelling,
    Scheduled,
    to_state_create,
)
from pydantic import TypeAdapter

from api.idempotency import default_keys, request_digest, same_request
from api.models import ArtifactLink, LoopView, Progress, RunState, RunView
from clients.settings import get_settings
from tasks.report_text import md_unescape
from tasks.request import AnalysisRequest


class RunNotFound(LookupError):
    pass


class DeploymentNotFound(LookupError):
    pass


class RunConflict(RuntimeError):
    """The run's state does not allow what was asked (cancel a finished run, retry a running one)."""


class IdempotencyConflict(RuntimeError):
    """An Idempotency-Key already names a run of a different request; the message names both."""


@dataclass(frozen=True)
class Triggered:
    run: FlowRun
    replayed: bool  # True: the key named a run that already existed, returned as it is


FINAL_STATES = {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}
ITERATIONS_KEY = "iterations"  # the table artifact the flow updates after every round
MAX_LISTED = 200  # subflows and artifacts read per run: a run makes a handful
NOT_STARTED = {StateType.SCHEDULED, StateType.PAUSED}


def idempotency_key_for(request: AnalysisRequest, window_s: int | None = None) -> str:
    """The key ``POST /runs`` gives ``request`` now when no header names one (reads its inputs' metadata)."""
    window_s = window_s or get_settings().api.default_idempotency_window_s
    return default_keys(request_digest(request), time.time(), window_s)[0]


async def deployment_of(client: PrefectClient, deployment: str) -> DeploymentResponse:
    try:
        return await client.read_deployment_by_name(deployment)
    except ObjectNotFound as e:
        raise DeploymentNotFound(
            f"deployment '{deployment}' is not registered with the Prefect API; run "
            "`python -m deployments.setup local` (or set STACKFLOWS_API__DEPLOYMENT)"
        ) from e


async def trigger(
    client: PrefectClient, deployment: DeploymentResponse, request: AnalysisRequest, idempotency_key: str
) -> Triggered:
    """Create the flow run (Scheduled now) and return at once. A key that already names a run returns
    that run as a replay if it holds this very request, and raises IdempotencyConflict if not.

    The create call is made here rather than through ``arun_deployment`` because only its status tells
    a new run (201) from an existing one (200).
    """
    body = DeploymentFlowRunCreate(
        parameters={"request": request.model_dump(mode="json")},
        state=to_state_create(Scheduled()),
        idempotency_key=idempotency_key,
    )
    response = await client.request(
        "POST",
        "/deployments/{id}/create_flow_run",
        path_params={"id": deployment.id},
        json=body.model_dump(mode="json", exclude_unset=True),
    )
    run = FlowRun.model_validate(response.json())
    replayed = response.status_code != 201
    if replayed and (run.deployment_id != deployment.id or not same_request(run.parameters, request)):
        raise IdempotencyConflict(
            f"Idempotency-Key '{idempotency_key}' already names run {run.id}, made for a different request; "
            "send a new key to start another run, or the same request to get that run"
        )
    return Triggered(run, replayed)


async def recent_run_with_key(
    client: PrefectClient, deployment: DeploymentResponse, keys: list[str], younger_than: timedelta, now: datetime
) -> FlowRun | None:
    """The newest run of the deployment's flow under one of ``keys`` created less than ``younger_than`` ago."""
    found = await client.read_flow_runs(
        flow_filter=FlowFilter(id=FlowFilterId(any_=[deployment.flow_id])),
        flow_run_filter=FlowRunFilter(idempotency_key=FlowRunFilterIdempotencyKey(any_=keys)),
        sort=FlowRunSort.EXPECTED_START_TIME_DESC,
        limit=len(keys),
    )
    recent = [r for r in found if r.deployment_id == deployment.id and r.created and now - r.created < younger_than]
    return max(recent, key=lambda r: r.created, default=None)


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
    # Not the result records Prefect keeps as artifacts (type "result" or none, no key): they are no
    # output a user made, and they would fill the listing of a run with many tasks.
    only_real = ArtifactFilter(
        flow_run_id=ArtifactFilterFlowRunId(any_=run_ids), type=ArtifactFilterType(not_any_=["result"])
    )
    body = {
        "artifacts": only_real.model_dump(mode="json", exclude_unset=True),
        "sort": ArtifactSort.CREATED_DESC.value,
        "limit": MAX_LISTED,
    }
    response = await client.request("POST", "/artifacts/filter", json=body)
    artifacts = TypeAdapter(list[Artifact]).validate_python(response.json())
    return [a for a in artifacts if a.type not in (None, "result")]


_MARKDOWN_LINK = re.compile(r"^\[[^\]]*\]\((?P<url>[^)]+)\)$")


def _link_of(artifact: Artifact) -> str | None:
    """The target of a link artifact (Prefect 3.8 stores those as markdown that is one link) or image."""
    if artifact.type not in ("link", "image", "markdown") or not isinstance(artifact.data, str):
        return None
    match = _MARKDOWN_LINK.match(artifact.data.strip())
    if match:
        return match.group("url")
    return None if artifact.type == "markdown" else artifact.data


def loop_view(run: FlowRun, artifacts: list[Artifact]) -> LoopView | None:
    """The loop's state from the latest ``iterations`` table: rounds, the best so far, the one running."""
    tables = [a for a in artifacts if a.key == ITERATIONS_KEY and a.data]
    if not tables:
        return None
    latest = max(tables, key=lambda a: a.updated or a.created)
    try:
        rows = json.loads(latest.data) if isinstance(latest.data, str) else latest.data
        rounds = [(int(row["round"]), _int_or_none(row.get("composite")), str(row.get("decision") or "")) for row in rows]
    except (TypeError, ValueError, KeyError):
        return None  # not our table's shape: show the run without it
    if not rounds:
        return None
    scored = [(score, -k) for k, score, _ in rounds if score is not None]
    best = max(scored, default=None)
    last_k, _, last_decision = max(rounds)
    running = run.state is not None and run.state.type.value == "RUNNING" and not last_decision.startswith("stop")
    return LoopView(
        rounds_done=len(rounds),
        current_round=last_k + 1 if running else None,
        best_round=-best[1] if best else None,
        best_score=best[0] if best else None,
        last_decision=md_unescape(last_decision) or None,  # the table's cells are markdown
    )


def _int_or_none(value: object) -> int | None:
    return None if value in (None, "", "not assessed") else int(float(value))


def view(
    run: FlowRun, ui_url: str, artifacts: list[Artifact] = (), browser_url: Callable[[str], str | None] = lambda _: None
) -> RunView:
    """The run as the API shows it, with the latest progress and links to its artifacts;
    ``browser_url`` turns a link to a run output into a freshly signed URL a browser can open."""
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
        loop=loop_view(run, artifacts),
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
                link=(link := _link_of(a)),
                url=browser_url(link) if link else None,
                ui_url=f"{ui_url}/artifacts/artifact/{a.id}",
                flow_run_id=a.flow_run_id,
            )
            for a in artifacts
            if a.type != "progress"
        ],
    )
