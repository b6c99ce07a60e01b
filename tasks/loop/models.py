"""What a round of the closed loop leaves behind, and why the loop ended.

A ``RoundRecord`` is persisted as the round subflow's result: a Retry of the run replays finished
rounds from it (their plan, job and evaluation), so nothing is paid for twice.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from inference.contract import JobManifest, PredictionSummary
from tasks.agent.plan import AgentUsage, RunPlan
from tasks.grounding.models import GroundingEvaluation

StopReason = Literal[
    "threshold_met",  # the composite reached the threshold
    "max_iterations",  # as many rounds as allowed ran
    "plateau",  # the best composite did not rise by plateau_min_gain over plateau_rounds rounds
    "plan_repeated",  # the next plan was one already tried
    "agent_stopped",  # the refiner chose to stop (Claude), or had no untried candidate left (offline)
    "budget",  # the next round would exceed the GPU-seconds or LLM-dollar budget (estimated from the rounds so far)
    "not_assessable",  # two rounds without a composite
]

STOP_WORDS: dict[str, str] = {
    "threshold_met": "the composite score reached the threshold",
    "max_iterations": "the most rounds allowed ran",
    "plateau": "the best score stopped improving",
    "plan_repeated": "the next plan was one already tried",
    "agent_stopped": "the planner chose to stop",
    "budget": "the next round would exceed the budget",
    "not_assessable": "two rounds could not be scored",
}


class RoundRecord(BaseModel):
    """One round: the plan, the job that ran it, what it cost and how it scored."""

    k: int = Field(ge=1, description="The round's number, from 1.")
    plan: RunPlan
    job_id: str
    reused_job_of: int | None = Field(default=None, description="The earlier round whose job this round reused.")
    output_prefix: str = Field(description="runs/<run>/iter-<k>/ (the job's outputs are under its own prefix).")
    outputs: dict[str, str] = Field(description="Name -> URI: predictions, de, summary, manifest.")
    gpu_seconds: float = Field(ge=0, description="GPU wall time of the job (0 on a CPU; 0 when reused).")
    wall_seconds: float = Field(ge=0, description="The job's wall time.")
    llm_usd: float = Field(default=0.0, ge=0, description="What planning this round cost (USD, estimated).")
    summary: PredictionSummary
    evaluation: GroundingEvaluation
    manifest: JobManifest | None = Field(default=None, description="The job's manifest (the report's job figures).")
    preemptions: int = Field(default=0, ge=0, description="Times Batch preempted the job before it ran to the end.")

    @property
    def composite(self) -> int | None:
        return self.evaluation.composite


class LoopDecision(BaseModel):
    """Whether another round starts, and if not, why."""

    go_on: bool
    reason: StopReason | None = None
    detail: str = ""


class LoopOutcome(BaseModel):
    """The whole loop: every round, the best one (the run's result) and why it ended."""

    rounds: list[RoundRecord]
    decisions: dict[int, str] = Field(default_factory=dict, description="k -> what was decided after round k.")
    best_round: int = Field(description="k of the round with the highest composite (the earliest on ties; round 1 when none scored).")
    stop_reason: StopReason
    stop_detail: str = ""

    @property
    def best(self) -> RoundRecord:
        return next(r for r in self.rounds if r.k == self.best_round)


class RefinedPlan(BaseModel):
    """What a refiner answers after a round: the next plan, or a reason to stop."""

    plan: RunPlan | None = Field(description="The next round's plan; None: the refiner stops the loop.")
    stop_reason: str = Field(default="", description="Why it stops, in its words (or 'no untried candidate').")
    planned_by: str
    usage: AgentUsage | None = None


def plan_identity(plan: RunPlan) -> str:
    """What makes two plans the same experiment: the cells, the contexts, the control and the steps."""
    import json

    fields = plan.model_dump(
        mode="json",
        include={"split_column", "split_values", "control_value", "prompt_obs_filter", "query_obs_filter", "num_steps", "seed"},
    )
    fields["split_values"] = sorted(fields["split_values"])
    for name in ("prompt_obs_filter", "query_obs_filter"):
        if fields[name]:
            fields[name] = {column: sorted(values) for column, values in sorted(fields[name].items())}
    return json.dumps(fields, sort_keys=True)
