"""Secrets stay secret through a whole run: the Anthropic key (from the worker's environment) and the
API's bearer token must not appear in any process log, Prefect log, artifact, flow-run parameter or
report file of a run in which the agent really called the (fake) Messages API with that key."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from deployments.local_stack import LocalStack, running_local_stack
from tests.fake_anthropic_api import FakeMessagesAPI, text, tool_use
from tests.small_inputs import Inputs, make_inputs

pytestmark = pytest.mark.e2e

ANTHROPIC_KEY = "sk-ant-e2e-Zq81XbW3-never-print-me"
TOKEN = "e2e-secret-token-4c9d1e"
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
    root = tmp_path_factory.mktemp("secrets")
    inputs = make_inputs(root / "data")
    agent_env = {"ANTHROPIC_API_KEY": ANTHROPIC_KEY, "STACKFLOWS_AGENT__BASE_URL": agent_api.base_url}
    with running_local_stack(root, root / "data", TOKEN, extra_env=agent_env) as stack:
        yield stack, inputs


def test_no_key_or_token_in_logs_artifacts_parameters_or_reports(
    stack: tuple[LocalStack, Inputs], agent_api: FakeMessagesAPI
) -> None:
    local, inputs = stack
    agent_api.reply([tool_use("submit_expectations", {"genes_up": ["CD14"]})])
    agent_api.reply([tool_use("submit_plan", PLAN)])
    agent_api.reply([text("Monocytes under a B-cell context: see the table.")])
    h5ad = inputs.h5ad.as_uri()
    body = {
        "question": "How do monocytes look among B cells?",
        "prompt_uri": h5ad, "query_uri": h5ad,
        "gene_list_uri": inputs.gene_list.as_uri(), "checkpoint_uri": inputs.checkpoint.as_uri(),
        "max_iterations": 1,  # one pass: expectations, plan, interpretation (tests/e2e/test_e2e_loop.py has rounds)
    }
    with local.api() as api:
        run_id = api.post("/runs", json=body).json()["id"]
    done = local.wait_for_run(run_id)
    assert done["state"]["type"] == "COMPLETED", done["state"]
    sent_keys = [
        r.headers.get("x-api-key") or r.headers.get("authorization", "").removeprefix("Bearer ")
        for r in agent_api.requests
    ]
    assert sent_keys == [ANTHROPIC_KEY] * 3, "the agent should have set expectations, planned and interpreted with the key"

    with local.prefect() as prefect:
        from_prefect = {
            name: prefect.post(f"/{path}/filter", json={"limit": 200}).raise_for_status().text
            for name, path in (("prefect logs", "logs"), ("artifacts", "artifacts"), ("flow runs", "flow_runs"))
        }
    where = {
        **{f"{p.name}.log": p.log.read_text(errors="replace") for p in local.processes},
        **from_prefect,
        **{str(p): p.read_text(errors="replace") for p in (local.data_dir / "objects" / "runs").rglob("report.*")},
    }
    assert len(where) > 5 and "report.md" in " ".join(where)
    secrets = (ANTHROPIC_KEY, TOKEN, local.auth_string)
    leaks = [name for name, content in where.items() if any(secret in content for secret in secrets)]
    assert leaks == [], f"a secret leaked into {leaks}"
