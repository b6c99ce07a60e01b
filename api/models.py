"""What the API answers: a flow run as a caller of POST /runs needs to see it."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from pydantic import BaseModel, Field


class RunState(BaseModel):
    type: str = Field(description="Prefect state type: SCHEDULED, PENDING, RUNNING, COMPLETED, FAILED, ...")
    name: str = Field(description="State name, e.g. 'AwaitingRetry' or 'Cancelling'.")
    message: str | None = None
    timestamp: datetime | None = None


class Progress(BaseModel):
    """The run's most recently updated progress artifact (the GPU job's chunks, mostly)."""

    percent: float = Field(ge=0, le=100)
    key: str | None = None
    description: str | None = None
    updated: datetime | None = None


class LoopView(BaseModel):
    """Where the closed loop stands, from the run's ``iterations`` table (updated after every round)."""

    rounds_done: int = Field(ge=0, description="Rounds scored so far.")
    current_round: int | None = Field(default=None, description="The round running now; None once the loop ended.")
    best_round: int | None = Field(default=None, description="The round with the best composite so far.")
    best_score: int | None = Field(default=None, description="That round's composite (0-10); None when none scored.")
    last_decision: str | None = None


class ArtifactLink(BaseModel):
    """One artifact of the run or its subflows: the report, tables, plots, links to outputs."""

    id: UUID
    key: str | None = None
    type: str | None = None
    description: str | None = None
    link: str | None = Field(default=None, description="The target of link and image artifacts.")
    url: str | None = Field(
        default=None,
        description="For a link to a run output: a signed URL, valid from now on, at which a browser opens it.",
    )
    ui_url: str
    flow_run_id: UUID | None = None


class RunView(BaseModel):
    id: UUID
    name: str
    deployment_id: UUID | None = None
    state: RunState | None = None
    ui_url: str = Field(description="The run's page in the Prefect UI.")
    idempotency_key: str | None = None
    run_count: int = 0
    created: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    progress: Progress | None = None
    loop: LoopView | None = Field(default=None, description="The closed loop's rounds, once one has been scored.")
    artifacts: list[ArtifactLink] = Field(default_factory=list)


class Health(BaseModel):
    status: str
    prefect_api: str
