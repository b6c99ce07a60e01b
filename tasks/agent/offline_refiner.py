"""The next round's plan without a model: a fixed order of variations on the best plan so far.

Used after round 1 when no ``ANTHROPIC_API_KEY`` is set. Deterministic (the same request, data and
rounds give the same plan), so a Retry replans nothing new. The candidates, in order, are variations
of the anchor plan (the best-scoring round's, else round 1's):

1. other contexts of the same split column (well-populated values no round has used yet), then a
   control: a baseline value (PBS, vehicle, ...) when no round on this column had one, or another
   baseline value than those tried;
2. another split column, chosen as the offline planner chooses one (the next best categorical column);
3. more steps (twice as many, at most MAX_STEPS);
4. no prompt filter (all prompt cells).

A candidate is skipped when a round already tried it (:func:`plan_identity`), when it would change
what the request fixes, or when :func:`check_plan` finds a problem with it on the data. With none
left the refiner stops the loop.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from clients.llm.settings import AgentSettings
from inference.contract import MAX_STEPS
from tasks.agent.control_choice import choose_control
from tasks.agent.offline_planner import (
    OFFLINE_PLANNER,
    choose_split_values,
    offline_plan,
    question_words,
    split_column_scores,
)
from tasks.agent.plan import RunPlan
from tasks.agent.plan_checks import check_plan, explicit_fields, without_control
from tasks.agent.plan_data import PlanData
from tasks.loop.models import RefinedPlan, RoundRecord, plan_identity
from tasks.loop.stopping import best_round
from tasks.loop.table import describe_filter
from tasks.request import AnalysisRequest

NO_CANDIDATE = "the offline refiner has no untried candidate"


@dataclass(frozen=True)
class Candidate:
    rule: str  # which rule made it, in words
    change: str  # what it changes, with the figures
    plan: RunPlan


def next_offline_plan(
    request: AnalysisRequest,
    data: PlanData,
    tried: Sequence[RunPlan | RoundRecord],
    settings: AgentSettings,
) -> RefinedPlan:
    """The next untried candidate plan, or a stop when none is left.

    ``tried`` is the plans earlier rounds ran, in round order, or those rounds themselves: given
    rounds, the refiner builds on the best-scoring one and its rationale names the last composite.
    With nothing tried it is the offline planner's first plan.
    """
    if not tried:
        return RefinedPlan(plan=offline_plan(request, data, settings), planned_by=OFFLINE_PLANNER)
    plans = [t.plan if isinstance(t, RoundRecord) else t for t in tried]
    rounds = [t for t in tried if isinstance(t, RoundRecord)]
    scored = len(rounds) == len(tried)
    anchor_k = best_round(rounds) if scored else 1
    anchor = plans[[r.k for r in rounds].index(anchor_k)] if scored else plans[0]
    fixed = explicit_fields(request)
    seen = {plan_identity(p) for p in plans}
    for candidate in _candidates(request, data, anchor, plans, fixed, settings):
        plan = without_control(candidate.plan)
        identity = plan_identity(plan)
        if identity in seen or not _keeps(plan, anchor, fixed) or check_plan(plan, data, settings):
            continue
        seen.add(identity)
        rationale = _rationale(len(tried) + 1, candidate, rounds if scored else [], anchor_k, plan)
        refined = plan.model_copy(update={"rationale": rationale, "planned_by": OFFLINE_PLANNER, "usage": None})
        return RefinedPlan(plan=RunPlan.model_validate(refined.model_dump()), planned_by=OFFLINE_PLANNER)
    return RefinedPlan(plan=None, stop_reason=NO_CANDIDATE, planned_by=OFFLINE_PLANNER)


def _candidates(
    request: AnalysisRequest,
    data: PlanData,
    anchor: RunPlan,
    plans: list[RunPlan],
    fixed: dict[str, Any],
    settings: AgentSettings,
) -> Iterator[Candidate]:
    """Every candidate in the refiner's order; the caller keeps the first that passes."""
    column = anchor.split_column
    same_column = [p for p in plans if p.split_column == column]
    counts = data.prompt.value_counts(column, anchor.prompt_obs_filter)
    need = settings.min_prompt_cells_per_split
    if "split_values" not in fixed:
        used = {v for p in same_column for v in [*p.split_values, p.control_value] if v is not None}
        if "control_value" not in fixed and (baseline := choose_control(column, counts, need)) is not None:
            used.add(baseline[0])  # the column's baseline is a control, not a treated context
        queried = set((anchor.query_obs_filter or {}).get(column, []))
        fresh = [v for v, n in counts.items() if n >= need and v not in used and v not in queried]
        words = question_words(request.question)
        fresh.sort(key=lambda v: not (question_words(v) & words))  # stable: named values first, then the largest
        if fresh:
            values = fresh[: settings.max_split_values]
            yield Candidate(
                "other contexts", f"{_names(values)} instead of {_names(anchor.split_values)}",
                anchor.model_copy(update={"split_values": values}),
            )
    if "control_value" not in fixed:
        tried_controls = {p.control_value for p in same_column if p.control_value is not None}
        options = {v: n for v, n in counts.items() if v not in tried_controls}
        if "split_values" in fixed and len(set(fixed["split_values"])) == 1:
            options.pop(fixed["split_values"][0], None)  # the request's one context stays treated
        chosen = choose_control(column, options, need)
        if chosen is not None:
            control = chosen[0]
            change = (
                f"control {control!r} instead of {anchor.control_value!r}" if anchor.control_value
                else f"control {control!r}, a baseline value of {column!r}; no round had a control"
            )
            rule = "another control" if tried_controls else "a control"
            yield Candidate(rule, change, anchor.model_copy(update={"control_value": control}))
    if "split_column" not in fixed:
        split_on = {p.split_column for p in plans}
        for other in _ranked_columns(request.question, data, anchor.prompt_obs_filter, settings):
            if other in split_on:
                continue
            other_counts = data.prompt.value_counts(other, anchor.prompt_obs_filter)
            chosen = choose_control(other, other_counts, need)
            control = chosen[0] if chosen else None
            values = choose_split_values(
                request.question, data.prompt, other, anchor.prompt_obs_filter, anchor.query_obs_filter, settings, control
            )
            if values:
                yield Candidate(
                    "another split column",
                    f"{other!r}: {_names(values)}" + (f", control {control!r}" if control else "")
                    + f"; instead of {column!r}",
                    anchor.model_copy(update={"split_column": other, "split_values": values, "control_value": control}),
                )
    if "num_steps" not in fixed and anchor.num_steps < MAX_STEPS:
        steps = min(2 * anchor.num_steps, MAX_STEPS)
        yield Candidate("more steps", f"{anchor.num_steps} -> {steps}", anchor.model_copy(update={"num_steps": steps}))
    if "prompt_obs_filter" not in fixed and anchor.prompt_obs_filter:
        yield Candidate(
            "no prompt filter",
            f"all prompt cells instead of {describe_filter(anchor.prompt_obs_filter)}",
            anchor.model_copy(update={"prompt_obs_filter": None}),
        )


def _ranked_columns(
    question: str, data: PlanData, prompt_filter: dict[str, list[str]] | None, settings: AgentSettings
) -> list[str]:
    """Categorical prompt columns worth splitting on, best first, scored as the offline planner
    scores them; ties keep the columns' order, as the planner's own choice does."""
    scored = split_column_scores(question, data.prompt, prompt_filter, settings)
    order = sorted(range(len(scored)), key=lambda i: (scored[i][0], -i), reverse=True)
    return [scored[i][1] for i in order]


def _keeps(plan: RunPlan, anchor: RunPlan, fixed: dict[str, Any]) -> bool:
    """The candidate leaves every field the request fixes as the anchor (which honours them) has it."""
    return all(getattr(plan, name) == getattr(anchor, name) for name in fixed)


def _rationale(k: int, candidate: Candidate, rounds: list[RoundRecord], anchor_k: int, plan: RunPlan) -> str:
    after = ""
    if rounds:
        last = rounds[-1].composite
        after = f" after composite {last}" if last is not None else " after an unscored round"
    base = f"built on round {anchor_k}'s plan" + (" (the best so far)" if rounds and len(rounds) > 1 else "")
    control = f"; control {plan.control_value!r}" if plan.control_value else "; no control"
    return (
        f"round {k}: {candidate.rule} ({candidate.change}){after}; {base}. "
        f"Refined without a model: split on {plan.split_column!r}: {_names(plan.split_values)}{control}; "
        f"{plan.num_steps} steps; prompt cells: {describe_filter(plan.prompt_obs_filter)}. "
        "The offline refiner tries, in order: other contexts or a control, another split column, more steps, "
        "no prompt filter, skipping plans already tried."
    )


def _names(values: Sequence[str]) -> str:
    return ", ".join(repr(v) for v in values)
