"""The offline refiner: a fixed order of candidates, none tried twice, the request's fields kept,
and a stop once nothing is left."""

from __future__ import annotations

import pandas as pd
import pytest

from clients.llm.settings import AgentSettings
from tasks.agent.offline_planner import OFFLINE_PLANNER
from tasks.agent.offline_refiner import NO_CANDIDATE, next_offline_plan
from tasks.agent.plan import RunPlan
from tasks.agent.plan_checks import check_plan, explicit_fields
from tasks.agent.plan_data import ObsTable, PlanData
from tasks.loop.models import plan_identity
from tasks.request import AnalysisRequest
from tests.loop.records import record

URI = "file:///data/screen.h5ad"
QUESTION = "How does IFNG change the cells?"
SETTINGS = AgentSettings()  # at least 10 prompt cells per context


def _data() -> PlanData:
    """123 cells: condition (PBS 30, IFNG 28, TNF 25, IL4 20, LPS 15, rare 5), cell_type, donor, a score."""
    condition = ["PBS"] * 30 + ["IFNG"] * 28 + ["TNF"] * 25 + ["IL4"] * 20 + ["LPS"] * 15 + ["rare"] * 5
    n = len(condition)
    obs = pd.DataFrame(
        {
            "condition": pd.Categorical(condition),
            "cell_type": pd.Categorical(["T"] * 53 + ["B"] * 40 + ["Mono"] * 30),
            "donor": pd.Categorical([f"d{1 + i % 2}" for i in range(n)]),
            "n_genes": [1000.0 + i for i in range(n)],
        },
        index=[f"cell{i}" for i in range(n)],
    )
    table = ObsTable(uri=URI, obs=obs, n_vars=2000)
    return PlanData(prompt=table, query=table)


def _request(**fields: object) -> AnalysisRequest:
    return AnalysisRequest(question=QUESTION, prompt_uri=URI, query_uri=URI, **fields)


def _sequence(request: AnalysisRequest, settings: AgentSettings = SETTINGS, limit: int = 20) -> tuple[list[RunPlan], str]:
    """Every plan the refiner gives, round after round, until it stops; and why it stopped."""
    data, plans = _data(), []
    for _ in range(limit):
        refined = next_offline_plan(request, data, plans, settings)
        assert refined.planned_by == OFFLINE_PLANNER
        if refined.plan is None:
            return plans, refined.stop_reason
        assert check_plan(refined.plan, data, settings) == []
        plans.append(refined.plan)
    raise AssertionError(f"the refiner did not stop within {limit} rounds")


def _shape(plan: RunPlan) -> tuple:
    return plan.split_column, plan.split_values, plan.control_value, plan.num_steps, plan.prompt_obs_filter


def test_candidates_come_in_order_then_the_refiner_stops() -> None:
    plans, why = _sequence(_request())

    assert [_shape(p) for p in plans] == [
        ("condition", ["IFNG"], "PBS", 10, None),  # round 1: the offline planner's plan
        ("condition", ["TNF", "IL4", "LPS"], "PBS", 10, None),  # other contexts ('rare' has too few cells)
        ("cell_type", ["T", "B", "Mono"], None, 10, None),  # another split column: the telling name first
        ("donor", ["d1", "d2"], None, 10, None),  # the next column
        ("condition", ["IFNG"], "PBS", 20, None),  # more steps on round 1's plan
    ]
    assert why == NO_CANDIDATE
    assert len({plan_identity(p) for p in plans}) == len(plans)  # nothing tried twice
    assert all(p.planned_by == OFFLINE_PLANNER for p in plans)


def test_other_contexts_are_taken_a_few_at_a_time() -> None:
    plans, _ = _sequence(_request(), settings=AgentSettings(max_split_values=2))

    assert [p.split_values for p in plans[:3]] == [["IFNG"], ["TNF", "IL4"], ["LPS"]]


def test_a_plan_without_a_control_gets_the_baseline_as_control() -> None:
    tried = [RunPlan(
        split_column="condition", split_values=["IFNG", "TNF", "IL4", "LPS"], num_steps=10,
        rationale="a model's plan", planned_by="model claude-x",
    )]

    refined = next_offline_plan(_request(), _data(), tried, SETTINGS)

    assert refined.plan is not None
    assert (refined.plan.control_value, refined.plan.split_values) == ("PBS", ["IFNG", "TNF", "IL4", "LPS"])
    assert refined.plan.rationale.startswith("round 2: a control (control 'PBS'")


def test_it_builds_on_the_best_round_and_says_so() -> None:
    data = _data()
    first = next_offline_plan(_request(), data, [], SETTINGS).plan
    second = next_offline_plan(_request(), data, [first], SETTINGS).plan
    rounds = [record(1, 3, plan=first), record(2, 5, plan=second)]

    refined = next_offline_plan(_request(), data, rounds, SETTINGS)

    assert refined.plan is not None and refined.plan.split_column == "cell_type"
    assert refined.plan.rationale.startswith(
        "round 3: another split column ('cell_type': 'T', 'B', 'Mono'; instead of 'condition') after composite 5; "
        "built on round 2's plan (the best so far)"
    )


def test_more_steps_when_the_request_fixes_the_cells_and_the_rationale_says_why() -> None:
    request = _request(split_column="condition", split_values=["IFNG"], control_value="PBS")
    data = _data()
    first = next_offline_plan(request, data, [], SETTINGS).plan

    refined = next_offline_plan(request, data, [record(1, 3, plan=first)], SETTINGS)

    assert refined.plan is not None and refined.plan.num_steps == 20
    assert refined.plan.rationale.startswith("round 2: more steps (10 -> 20) after composite 3")


def test_fixed_request_fields_never_change_and_the_candidates_run_out() -> None:
    request = _request(
        split_column="condition", control_value="PBS", query_obs_filter={"cell_type": ["T"]},
        prompt_obs_filter={"donor": ["d1"]},
    )

    plans, why = _sequence(request)

    fixed = explicit_fields(request)
    assert len(plans) >= 2 and why == NO_CANDIDATE
    for plan in plans:
        assert {name: getattr(plan, name) for name in fixed} == fixed
    assert {p.num_steps for p in plans} == {10, 20}  # steps are free to change


def test_fixed_steps_and_filter_leave_only_what_is_free() -> None:
    request = _request(
        split_column="condition", split_values=["IFNG"], control_value="PBS", num_steps=10,
    )
    plans, why = _sequence(request)

    assert [_shape(p) for p in plans] == [("condition", ["IFNG"], "PBS", 10, None)]
    assert why == NO_CANDIDATE


def test_dropping_the_prompt_filter_is_the_last_candidate() -> None:
    request = _request(split_column="condition", split_values=["IFNG"], control_value="PBS", num_steps=10)
    tried = [RunPlan(
        split_column="condition", split_values=["IFNG"], control_value="PBS", num_steps=10,
        prompt_obs_filter={"donor": ["d1"]}, rationale="a model's plan", planned_by="model claude-x",
    )]

    refined = next_offline_plan(request, _data(), tried, SETTINGS)

    assert refined.plan is not None and refined.plan.prompt_obs_filter is None
    assert "no prompt filter (all prompt cells instead of donor in d1)" in refined.plan.rationale
    assert next_offline_plan(request, _data(), [*tried, refined.plan], SETTINGS).plan is None


def test_the_same_rounds_give_the_same_plan() -> None:
    data = _data()
    first = next_offline_plan(_request(), data, [], SETTINGS).plan

    again = [next_offline_plan(_request(), data, [record(1, 2, plan=first)], SETTINGS) for _ in range(2)]

    assert again[0] == again[1]


@pytest.mark.parametrize("composite, words", [(None, "after an unscored round"), (4, "after composite 4")])
def test_the_rationale_names_the_last_score(composite: int | None, words: str) -> None:
    data = _data()
    first = next_offline_plan(_request(), data, [], SETTINGS).plan

    refined = next_offline_plan(_request(), data, [record(1, composite, plan=first)], SETTINGS)

    assert refined.plan is not None and words in refined.plan.rationale
