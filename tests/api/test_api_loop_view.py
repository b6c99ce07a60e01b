"""GET /runs/{id} says where the closed loop stands, from the run's ``iterations`` table artifact."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from uuid import uuid4

from prefect.client.schemas.objects import Artifact, FlowRun, State, StateType

from api.runs import loop_view


def run_in(state: StateType) -> FlowRun:
    return FlowRun(id=uuid4(), name="analysis", flow_id=uuid4(), state=State(type=state))


def iterations(rows: list[dict], minutes: int) -> Artifact:
    at = datetime(2026, 12, 2, tzinfo=UTC) + timedelta(minutes=minutes)
    return Artifact(id=uuid4(), key="iterations", type="table", data=json.dumps(rows), created=at, updated=at)


ROUND_1 = {"round": 1, "composite": 4, "decision": "go on"}
ROUND_2 = {"round": 2, "composite": None, "decision": "go on"}


def test_a_running_loop_shows_the_round_it_is_in_and_the_best_so_far() -> None:
    artifacts = [iterations([ROUND_1], minutes=1), iterations([ROUND_1, ROUND_2], minutes=2)]

    view = loop_view(run_in(StateType.RUNNING), artifacts)

    assert view is not None
    assert (view.rounds_done, view.current_round, view.best_round, view.best_score) == (2, 3, 1, 4)


def test_an_ended_loop_has_no_current_round_and_names_its_best() -> None:
    rows = [ROUND_1, {"round": 2, "composite": 6, "decision": "stop: the best score stopped improving"}]

    view = loop_view(run_in(StateType.COMPLETED), [iterations(rows, minutes=3)])

    assert view is not None and view.current_round is None and (view.best_round, view.best_score) == (2, 6)


def test_a_run_without_rounds_shows_no_loop() -> None:
    assert loop_view(run_in(StateType.RUNNING), []) is None


def test_the_last_decision_reads_as_plain_text_though_the_table_holds_markdown() -> None:
    rows = [{"round": 1, "composite": 2, "decision": "stop: the most rounds allowed ran \\(1 of at most 1\\)"}]

    view = loop_view(run_in(StateType.COMPLETED), [iterations(rows, minutes=1)])

    assert view is not None and view.last_decision == "stop: the most rounds allowed ran (1 of at most 1)"
