"""Checks that a plan can run on the staged data, in words a person (or a model) can act on.

Every planner's output goes through :func:`check_plan` before a GPU job is built from it: the
columns and values it names exist, each context has enough prompt cells (the control_value too,
which is never the only context) and there are query cells to generate for. The request's explicit plan fields are checked first, on their own, so a bad
request fails before any model is paid for.
"""

from __future__ import annotations

from typing import Any

from clients.llm.settings import AgentSettings
from tasks.request import AnalysisRequest
from tasks.agent.plan import ObsFilter, PlanProposal
from tasks.agent.plan_data import ObsTable, PlanData

# Request fields that, when given, the plan must use as they are.
EXPLICIT_FIELDS = (
    "split_column", "split_values", "control_value", "prompt_obs_filter", "query_obs_filter", "num_steps",
)


class PlanInvalid(ValueError):
    """A plan (or the request's explicit plan fields) does not fit the data."""

    def __init__(self, summary: str, problems: list[str]) -> None:
        self.summary = summary
        self.problems = problems
        super().__init__(summary + "\n" + "\n".join(f"- {p}" for p in problems))

    def __reduce__(self):  # keep both fields when Prefect pickles the failure
        return (type(self), (self.summary, self.problems))


def explicit_fields(request: AnalysisRequest) -> dict[str, Any]:
    """The plan fields the request fixes (those it gives), by name."""
    return {name: getattr(request, name) for name in EXPLICIT_FIELDS if getattr(request, name) is not None}


def apply_request(proposal: PlanProposal, request: AnalysisRequest) -> PlanProposal:
    """The proposal with the request's explicit fields put back (the request always wins), less the
    control among the treated contexts."""
    return without_control(proposal.model_copy(update=explicit_fields(request)))


def without_control(plan: PlanProposal) -> PlanProposal:
    """``plan`` with its control_value removed from split_values: the control is generated once, as
    the reference, never as a treated context. A plan whose only context is the control is left as it
    is, so that :func:`check_plan` can say what is wrong with it."""
    if plan.control_value is None or plan.control_value not in plan.split_values:
        return plan
    treated = [v for v in plan.split_values if v != plan.control_value]
    return plan.model_copy(update={"split_values": treated}) if treated else plan


def check_request(request: AnalysisRequest, data: PlanData, settings: AgentSettings) -> None:
    """Raise :class:`PlanInvalid` if the request's own plan fields cannot run on the data."""
    fixed = explicit_fields(request)
    problems: list[str] = []
    if "prompt_obs_filter" in fixed:
        problems += _filter_problems("prompt_obs_filter", fixed["prompt_obs_filter"], data.prompt, "prompt")
    if "query_obs_filter" in fixed:
        problems += _filter_problems("query_obs_filter", fixed["query_obs_filter"], data.query, "query")
        if not problems and data.query.count(fixed["query_obs_filter"]) < settings.min_query_cells:
            problems.append(
                f"query_obs_filter {fixed['query_obs_filter']} keeps no query cells; widen it or leave it out"
            )
    column = fixed.get("split_column")
    if column is not None and column not in data.prompt.obs.columns:
        problems.append(_unknown_column("split_column", column, data.prompt, "prompt"))
    elif column is not None and not problems:
        control = fixed.get("control_value")
        if "split_values" in fixed:
            problems += _split_problems(column, fixed["split_values"], request.prompt_obs_filter, data, settings)
            if control is not None and set(fixed["split_values"]) == {control}:
                problems.append(_only_control(control))
        if control is not None:
            problems += _split_problems(
                column, [control], request.prompt_obs_filter, data, settings, what="control_value"
            )
    elif column is None:
        for name in ("split_values", "control_value"):
            if name in fixed:
                problems.append(f"{name} is given without split_column; name the obs column the values belong to")
    if problems:
        raise PlanInvalid("The request's plan fields do not fit the data (fix the request):", problems)


def check_plan(plan: PlanProposal, data: PlanData, settings: AgentSettings) -> list[str]:
    """Everything wrong with ``plan`` on ``data``; an empty list means it can run."""
    problems = _filter_problems("prompt_obs_filter", plan.prompt_obs_filter, data.prompt, "prompt")
    problems += _filter_problems("query_obs_filter", plan.query_obs_filter, data.query, "query")
    if plan.split_column not in data.prompt.obs.columns:
        problems.append(_unknown_column("split_column", plan.split_column, data.prompt, "prompt"))
    if problems:
        return problems
    if len(plan.split_values) > settings.max_split_values:
        problems.append(
            f"split_values names {len(plan.split_values)} contexts; at most {settings.max_split_values} "
            "are allowed (each one is a full generation): keep the ones the question needs"
        )
    if len(set(plan.split_values)) != len(plan.split_values):
        problems.append("split_values repeats a value; name each context once")
    problems += _split_problems(plan.split_column, plan.split_values, plan.prompt_obs_filter, data, settings)
    if plan.control_value is not None:
        problems += _split_problems(
            plan.split_column, [plan.control_value], plan.prompt_obs_filter, data, settings, what="control_value"
        )
        if set(plan.split_values) == {plan.control_value}:
            problems.append(_only_control(plan.control_value))
    query_cells = data.query.count(plan.query_obs_filter)
    if query_cells < settings.min_query_cells:
        problems.append(
            f"query_obs_filter {plan.query_obs_filter} keeps {query_cells} query cells; at least "
            f"{settings.min_query_cells} needed"
        )
    return problems


def _split_problems(
    column: str,
    values: list[str],
    prompt_filter: ObsFilter | None,
    data: PlanData,
    settings: AgentSettings,
    what: str = "split value",
) -> list[str]:
    counts = data.prompt.value_counts(column, prompt_filter)
    present = data.prompt.value_counts(column)
    need = settings.min_prompt_cells_per_split
    enough = [v for v, n in counts.items() if n >= need]
    problems = []
    for value in values:
        have = counts.get(str(value), 0)
        if str(value) not in present:
            problems.append(
                f"{what} {value!r} is not a value of prompt column {column!r} "
                f"(values: {_listing(list(present))})"
            )
        elif have < need:
            where = " after prompt_obs_filter" if prompt_filter else ""
            problems.append(
                f"{what} {value!r} has {have} prompt cells{where}; at least {need} needed "
                f"(values with enough: {_listing(enough) or 'none'})"
            )
    return problems


def _only_control(control: str) -> str:
    return (
        f"the only context is the control {control!r}: the control is the reference, generated once; "
        "name at least one treated context in split_values"
    )


def _filter_problems(name: str, obs_filter: ObsFilter | None, table: ObsTable, side: str) -> list[str]:
    problems = []
    for column, values in (obs_filter or {}).items():
        if column not in table.obs.columns:
            problems.append(_unknown_column(name, column, table, side))
            continue
        if not values:
            problems.append(f"{name}[{column!r}] is an empty list; give at least one value or drop the column")
            continue
        present = table.value_counts(column)
        missing = [v for v in values if str(v) not in present]
        if missing:
            problems.append(
                f"{name}[{column!r}] names {_listing(missing)}, not values of the {side} data "
                f"(values: {_listing(list(present))})"
            )
    return problems


def _unknown_column(name: str, column: str, table: ObsTable, side: str) -> str:
    return f"{name} names column {column!r}, which the {side} data does not have (columns: {_listing(list(table.obs.columns))})"


def _listing(items: list[Any], limit: int = 25) -> str:
    shown = ", ".join(repr(str(i)) for i in items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
