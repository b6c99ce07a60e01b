"""The loop's stopping rules: each fires when it should, says why in figures, and no other fires early."""

from __future__ import annotations

import pytest

from clients.loop_settings import LoopSettings
from tasks.loop.budget import budget_note
from tasks.loop.models import RefinedPlan
from tasks.loop.stopping import after_round, before_round, best_round, on_refined
from tests.loop.records import record, run_plan

SETTINGS = LoopSettings()  # plateau: gain of 1 over 2 rounds


def _after(rounds, max_iterations: int = 5, threshold: float = 7.0, settings: LoopSettings = SETTINGS):
    return after_round(rounds, max_iterations=max_iterations, threshold=threshold, settings=settings)


def test_threshold_met_at_round_one_stops() -> None:
    decision = _after([record(1, 7)])

    assert not decision.go_on and decision.reason == "threshold_met"
    assert "composite 7 >= threshold 7" in decision.detail


def test_below_threshold_goes_on_and_says_what_is_next() -> None:
    decision = _after([record(1, 6)], max_iterations=3)

    assert decision.go_on and decision.reason is None
    assert "composite 6 < threshold 7" in decision.detail and "round 2 of 3" in decision.detail


def test_threshold_wins_over_max_iterations_on_the_last_round() -> None:
    decision = _after([record(1, 3), record(2, 8)], max_iterations=2)

    assert decision.reason == "threshold_met"


def test_max_iterations_reached_stops() -> None:
    decision = _after([record(1, 3), record(2, 5)], max_iterations=2)

    assert not decision.go_on and decision.reason == "max_iterations"
    assert "2 of at most 2 rounds" in decision.detail


def test_a_single_pass_stops_after_its_round() -> None:
    assert _after([record(1, 2)], max_iterations=1).reason == "max_iterations"


def test_plateau_stops_when_the_best_rose_less_than_the_gain() -> None:
    decision = _after([record(1, 4), record(2, 3), record(3, 4)])

    assert not decision.go_on and decision.reason == "plateau"
    assert decision.detail == "best 4 after round 1, 4 after round 3: gain 0 < 1 over 2 rounds"


def test_plateau_reports_a_fractional_gain_and_settings() -> None:
    settings = LoopSettings(plateau_min_gain=2.5, plateau_rounds=1)
    decision = _after([record(1, 3), record(2, 5)], settings=settings)

    assert decision.reason == "plateau"
    assert decision.detail == "best 3 after round 1, 5 after round 2: gain 2 < 2.5 over 1 round"


def test_no_plateau_while_the_score_still_rises_enough() -> None:
    assert _after([record(1, 2), record(2, 3), record(3, 3)]).go_on  # best 2 -> 3: gain 1, not < 1
    assert _after([record(1, 4), record(2, 3)]).go_on  # too few rounds to judge


def test_no_plateau_when_nothing_was_scored_before_the_window() -> None:
    assert _after([record(1, None), record(2, 3), record(3, 3)]).go_on


def test_not_assessable_twice_stops() -> None:
    decision = _after([record(1, None), record(2, 4), record(3, None)])

    assert not decision.go_on and decision.reason == "not_assessable"
    assert "rounds 1 and 3 have no composite" in decision.detail


def test_not_assessable_once_goes_on() -> None:
    decision = _after([record(1, None)])

    assert decision.go_on and "no composite" in decision.detail


def test_after_round_needs_a_round() -> None:
    with pytest.raises(ValueError, match="at least one finished round"):
        _after([])


def test_budget_stops_when_the_mean_round_would_go_over() -> None:
    rounds = [record(1, 3, gpu_seconds=60), record(2, 4, gpu_seconds=60)]

    decision = before_round(rounds, gpu_seconds_budget=150, llm_usd_budget=None)

    assert not decision.go_on and decision.reason == "budget"
    assert decision.detail == (
        "spent 120 GPU-seconds; the next round would add about 60 (the mean so far): over the budget of 150"
    )


def test_budget_allows_a_round_that_fits_exactly() -> None:
    rounds = [record(1, 3, gpu_seconds=50), record(2, 4, gpu_seconds=50)]

    assert before_round(rounds, gpu_seconds_budget=150, llm_usd_budget=None).go_on


def test_llm_budget_stops_on_dollars() -> None:
    rounds = [record(1, 3, llm_usd=0.2), record(2, 4, llm_usd=0.2)]

    decision = before_round(rounds, gpu_seconds_budget=1000, llm_usd_budget=0.5)

    assert decision.reason == "budget"
    assert "spent $0.40 on the language model" in decision.detail and "over the budget of $0.50" in decision.detail


def test_no_budget_or_no_rounds_never_stops() -> None:
    rounds = [record(1, 3, gpu_seconds=1e6, llm_usd=100)]

    assert before_round(rounds, gpu_seconds_budget=None, llm_usd_budget=None).go_on
    assert before_round([], gpu_seconds_budget=1, llm_usd_budget=0.01).go_on


def test_agent_stop_is_a_stop_with_its_words() -> None:
    refined = RefinedPlan(plan=None, stop_reason="the contexts are exhausted", planned_by="model claude-x")

    decision = on_refined(refined, [record(1, 3)])

    assert not decision.go_on and decision.reason == "agent_stopped"
    assert decision.detail == "model claude-x: the contexts are exhausted"


def test_repeated_plan_stops_even_with_other_words() -> None:
    tried = run_plan(["IFNG", "TNF"], control_value="PBS")
    again = run_plan(["TNF", "IFNG"], control_value="PBS", rationale="a new idea", planned_by="model claude-x")

    decision = on_refined(RefinedPlan(plan=again, planned_by="model claude-x"), [record(1, 3), record(2, 4, plan=tried)])

    assert not decision.go_on and decision.reason == "plan_repeated"
    assert "round 2's" in decision.detail


def test_a_new_plan_goes_on() -> None:
    new = run_plan(["IFNG"], num_steps=20)

    assert on_refined(RefinedPlan(plan=new, planned_by="x"), [record(1, 3, plan=run_plan(["IFNG"]))]).go_on


def test_best_round_is_the_highest_composite_earliest_on_ties() -> None:
    assert best_round([record(1, 3), record(2, 5), record(3, 5), record(4, 4)]) == 2


def test_best_round_ranks_unscored_rounds_lowest() -> None:
    assert best_round([record(1, None), record(2, 0), record(3, None)]) == 2
    assert best_round([record(1, None), record(2, None)]) == 1


def test_budget_note_says_what_is_left_and_whether_a_round_fits() -> None:
    rounds = [record(1, 3, gpu_seconds=60, llm_usd=0.03), record(2, 4, gpu_seconds=60, llm_usd=0.01)]

    note = budget_note(rounds, 150, None)

    assert note == (
        "Budget after 2 rounds: GPU 120 of 150 GPU-seconds spent, 30 left (a round takes about 60: the next may "
        "not fit); language model $0.04 spent, no limit (a round takes about $0.02)."
    )
    assert budget_note([], None, 1.0) == (
        "Budget after 0 rounds: GPU 0 GPU-seconds spent, no limit; language model $0.00 of $1.00 spent, $1.00 left."
    )
