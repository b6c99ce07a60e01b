"""The closed loop survives faults in a later round, on the local stack through the API: a run that
fails after round 2's plan, crashes after round 2's submission and fails after round 2's evaluation
is retried each time and completes with one GPU job per distinct plan, no repeated request to the
(fake) Messages API, and every round's outputs intact."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from clients.storage import local_path_of
from deployments.local_stack import LocalStack, running_local_stack
from tasks.gpu_job import verify_outputs
from tasks.report import AnalysisReport
from tests.e2e.test_e2e_runs import gpu_jobs
from tests.fake_anthropic_api import FakeMessagesAPI, text, tool_use
from tests.small_inputs import Inputs, make_inputs

pytestmark = pytest.mark.e2e

TOKEN = "loop-token-51c3"
ROUND_2_FAULTS = ["planned@2", "submitted@2", "evaluated@2"]
PLAN = {
    "split_column": "bulk_labels",
    "split_values": ["CD19+ B"],
    "query_obs_filter": {"bulk_labels": ["CD14+ Monocyte"]},
    "num_steps": 2,
    "rationale": "B cells as the context for monocytes.",
}


@pytest.fixture(scope="module")
def agent_api() -> Iterator[FakeMessagesAPI]:
    with FakeMessagesAPI() as api:
        yield api


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, agent_api: FakeMessagesAPI) -> Iterator[tuple[LocalStack, Inputs]]:
    root = tmp_path_factory.mktemp("loop")
    inputs = make_inputs(root / "data")
    env = {
        "ANTHROPIC_API_KEY": "sk-ant-loop-test",
        "STACKFLOWS_AGENT__BASE_URL": agent_api.base_url,
        "STACKFLOWS_FAULTS__FAIL_ONCE_AFTER": json.dumps(ROUND_2_FAULTS),
    }
    with running_local_stack(root, root / "data", TOKEN, extra_env=env) as stack:
        yield stack, inputs


def test_faults_in_round_two_are_retried_without_paying_twice(
    stack: tuple[LocalStack, Inputs], agent_api: FakeMessagesAPI
) -> None:
    local, inputs = stack
    agent_api.reply([tool_use("submit_expectations", {"genes_up": ["CD14"]})])
    agent_api.reply([tool_use("submit_plan", PLAN)])  # round 1
    agent_api.reply([tool_use("submit_plan", {**PLAN, "num_steps": 4, "rationale": "More steps."})])  # round 2
    agent_api.reply([text("Round 1 and round 2 scored alike; see the score card.")])
    body = inputs.request_body("How do monocytes look among B cells?", num_steps=None, max_iterations=2)

    states = []
    with local.api() as api:
        run_id = api.post("/runs", json=body).json()["id"]
        # One fault per attempt (failed, crashed, failed), and room for Prefect 3.8's late second
        # crash report, which can mark a retried attempt Crashed too (docs/deploy.md).
        for _ in range(len(ROUND_2_FAULTS) + 3):
            ended = local.wait_for_run(run_id)
            if ended["state"]["type"] == "COMPLETED":
                break
            states.append(ended["state"]["type"])
            assert ended["state"]["type"] in ("FAILED", "CRASHED"), ended["state"]
            assert api.post(f"/runs/{run_id}/retry").status_code == 200
        done = ended
    assert done["state"]["type"] == "COMPLETED", done["state"]
    met = sorted(p.name.removeprefix(f"{run_id}-") for p in (local.data_dir / "faults").iterdir())
    assert met == sorted(ROUND_2_FAULTS) and {"CRASHED", "FAILED"} <= set(states), (met, states)

    assert len(gpu_jobs(local.data_dir)) == 2, "one GPU job per distinct plan, whatever the retries"
    assert len(agent_api.requests) == 4 and agent_api.pending == 0, "a retry asked the model again"
    assert done["loop"]["rounds_done"] == 2 and done["loop"]["current_round"] is None, done["loop"]
    report_json = next((local.data_dir / "objects" / "runs" / run_id).rglob("report.json"))
    report = AnalysisReport.model_validate_json(report_json.read_text())
    assert [r.k for r in report.rounds] == [1, 2] and [r.steps for r in report.rounds] == [2, 4]
    run_prefix = local_path_of(report.outputs["report_json"]).parent.parent
    for row in report.rounds:  # every round's outputs, as its manifest vouches for them
        verify_outputs(row.job_id, (run_prefix / f"iter-{row.k}" / "stack").as_uri())
