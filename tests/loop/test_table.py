"""The rounds table: one row per round, the same columns in every row, reuse and decisions said."""

from __future__ import annotations

from clients.loop_settings import LoopSettings
from tasks.loop.models import LoopDecision
from tasks.loop.stopping import after_round
from tasks.loop.table import decision_text, iteration_rows
from tests.loop.records import record, run_plan


def test_a_row_per_round_with_plan_job_cost_scores_and_decision() -> None:
    first = record(1, 4, plan=run_plan(["IFNG", "TNF"], control_value="PBS"), gpu_seconds=61.26)
    second = record(
        2, 6, plan=run_plan(["IL4"], prompt_obs_filter={"donor": ["d1", "d2"]}, num_steps=20),
        components={"pathway_coherence": 6.0, "backtest": 6.5, "target_activation": None},
    )
    second = second.model_copy(update={"reused_job_of": 1, "job_id": "job-1", "gpu_seconds": 0.0})

    rows = iteration_rows([first, second], {1: "go on"})

    assert [row["round"] for row in rows] == [1, 2]
    assert rows[0]["contexts"] == "condition: IFNG, TNF" and rows[0]["control"] == "PBS"
    assert rows[0]["prompt cells"] == "all" and rows[1]["prompt cells"] == "donor in d1, d2"
    assert rows[0]["steps"] == 10 and rows[1]["steps"] == 20
    assert rows[0]["GPU-seconds"] == 61.3 and rows[0]["query cells"] == 100
    assert rows[1]["job id"] == "job-1 (reused from round 1)"
    assert rows[0]["planned by"].startswith("offline planner")
    # The components any round has, None where a round lacks one.
    assert rows[0]["pathway coherence"] == 4.0 and rows[0]["backtest"] is None
    assert rows[1]["backtest"] == 6.5 and rows[1]["target activation"] is None
    assert [row["composite"] for row in rows] == [4, 6]
    assert rows[0]["decision"] == "go on" and rows[1]["decision"] == ""  # round 2 not decided yet
    assert list(rows[0]) == list(rows[1])  # the same columns, in the same order
    assert all(value is None or isinstance(value, (str, int, float)) for row in rows for value in row.values())


def test_decisions_read_as_go_on_or_stop_with_the_figures() -> None:
    stop = after_round([record(1, 8)], max_iterations=3, threshold=7, settings=LoopSettings())

    assert decision_text(LoopDecision(go_on=True, detail="anything")) == "go on"
    assert decision_text(stop) == "stop: the composite score reached the threshold (round 1: composite 8 >= threshold 7)"
