"""RoundRecords for tests, built in one call: ``record(2, composite=5)``.

Small and stable on purpose: other test areas (the flow, the report) import it.
"""

from __future__ import annotations

from typing import get_args

from inference.contract import PredictionSummary
from tasks.agent.plan import RunPlan
from tasks.grounding.models import ComponentName, GroundingEvaluation, ScoreComponent
from tasks.loop.models import RoundRecord

COMPONENTS: tuple[str, ...] = get_args(ComponentName)


def run_plan(split_values: list[str] | None = None, **fields: object) -> RunPlan:
    """A valid-looking plan on 'condition' (10 steps, offline); ``fields`` override any field."""
    values: dict[str, object] = {
        "split_column": "condition",
        "split_values": split_values or ["IFNG"],
        "num_steps": 10,
        "rationale": "made by a test",
        "planned_by": "offline planner (no ANTHROPIC_API_KEY)",
    }
    values.update(fields)
    return RunPlan.model_validate(values)


def record(
    k: int,
    composite: int | None,
    *,
    plan: RunPlan | None = None,
    gpu_seconds: float = 10.0,
    llm_usd: float = 0.0,
    components: dict[str, float | None] | None = None,
) -> RoundRecord:
    """Round ``k`` scoring ``composite``; by default its plan is distinct per k (contexts 'context k').

    ``components`` maps component names to scores; by default pathway_coherence and target_activation
    both score ``composite`` (None when it is None), so the composite is what they would give.
    """
    scores = components if components is not None else {
        "pathway_coherence": None if composite is None else float(composite),
        "target_activation": None if composite is None else float(composite),
    }
    evaluation = GroundingEvaluation(
        components=[
            ScoreComponent(name=name, score=score, basis="made by a test" if score is not None else "not assessed (test)")
            for name, score in scores.items()
        ],
        composite=composite,
        weights={name: 1.0 for name in scores},
        pack_version="test-pack",
        reference="the query input",
    )
    return RoundRecord(
        k=k,
        plan=plan if plan is not None else _default_plan(k),
        job_id=f"job-{k}",
        output_prefix=f"file:///tmp/runs/test/iter-{k}/",
        outputs={},
        gpu_seconds=gpu_seconds,
        wall_seconds=gpu_seconds,
        llm_usd=llm_usd,
        summary=PredictionSummary(mode="generate", model_trained=False, query_cells=100, genes=2000),
        evaluation=evaluation,
    )


def _default_plan(k: int) -> RunPlan:
    return run_plan([f"context {k}"])
