"""Cancelling a run during a later round, on the local stack through the API: round 2's GPU job is
cancelled (its process ends), the run ends Cancelled, and round 1's outputs under ``iter-1/`` stay
as its manifest vouches for them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients.batch import JobState
from clients.batch.local import LocalProcessRunner
from clients.storage import local_path_of
from deployments.local_stack import LocalStack, running_local_stack
from deployments.processes import wait_until
from tasks.gpu_job import verify_outputs
from tests.batch.conftest import process_gone
from tests.e2e.test_e2e_runs import gpu_jobs
from tests.fake_anthropic_api import FakeMessagesAPI, tool_use
from tests.small_inputs import Inputs, make_inputs

pytestmark = pytest.mark.e2e

TOKEN = "cancel-round-token-7e21"
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
    root = tmp_path_factory.mktemp("cancel-round")
    inputs = make_inputs(root / "data")
    env = {"ANTHROPIC_API_KEY": "sk-ant-cancel-test", "STACKFLOWS_AGENT__BASE_URL": agent_api.base_url}
    with running_local_stack(root, root / "data", TOKEN, extra_env=env) as stack:
        yield stack, inputs


def job_of_round(data_dir: Path, k: int) -> Path | None:
    """The local runner's directory of the GPU job whose outputs go under ``iter-<k>/``."""
    for job in gpu_jobs(data_dir):
        request = job / "request.json"
        if request.is_file() and f"/iter-{k}/" in json.loads(request.read_text())["output_prefix"]:
            return job
    return None


def test_cancelling_during_round_two_cancels_its_job_and_keeps_round_one(
    stack: tuple[LocalStack, Inputs], agent_api: FakeMessagesAPI
) -> None:
    local, inputs = stack
    runner = LocalProcessRunner(local.data_dir / "jobs")
    agent_api.reply([tool_use("submit_expectations", {"genes_up": ["CD14"]})])
    agent_api.reply([tool_use("submit_plan", PLAN)])  # round 1: a short job
    # Round 2: the longest job a plan may ask for, so it is still running when the cancel arrives.
    agent_api.reply([tool_use("submit_plan", {**PLAN, "num_steps": 1000, "rationale": "Many more steps."})])
    body = inputs.request_body(
        "How do monocytes look among B cells?", num_steps=None, max_iterations=2, score_threshold=10
    )

    with local.api() as api:
        run_id = api.post("/runs", json=body).json()["id"]

        def round_two_running() -> tuple[str, int] | None:
            job = job_of_round(local.data_dir, 2)
            if job is None or not (job / "pid").is_file() or runner.status(job.name).progress is None:
                return None
            return job.name, int((job / "pid").read_text().split()[0])

        job_id, pid = wait_until(round_two_running, 300, "round 2's GPU job to report progress", watch=local.processes)
        assert runner.status(job_id).state is JobState.RUNNING
        cancelled = api.post(f"/runs/{run_id}/cancel")
        assert cancelled.status_code == 200, cancelled.text

    done = local.wait_for_run(run_id)
    assert done["state"]["type"] == "CANCELLED", done["state"]
    final = wait_until(lambda: (s := runner.status(job_id)).state.is_final and s, 60, "round 2's GPU job to end")
    assert final.state is JobState.CANCELLED, final
    wait_until(lambda: process_gone(pid), 30, f"round 2's job process {pid} to end")

    round_one = job_of_round(local.data_dir, 1)
    assert round_one is not None and runner.status(round_one.name).state is JobState.SUCCEEDED
    prefix = json.loads((round_one / "request.json").read_text())["output_prefix"]
    assert f"/runs/{run_id}/iter-1/" in prefix
    collected = verify_outputs(round_one.name, prefix)  # every output still matches its manifest's sha256
    assert collected.outputs and all(local_path_of(uri).is_file() for uri in collected.outputs.values())
