"""Claude plans a run: the real anthropic SDK against the fake Messages API on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clients.llm.claude import ClaudeClient, SpendLimitReached
from clients.llm.settings import AgentSettings
from tasks.request import AnalysisRequest
from tasks.agent.claude import plan_with_claude
from tasks.agent.plan_checks import PlanInvalid
from tasks.agent.plan_data import PlanData
from tests.agent.conftest import FAKE_KEY
from tests.fake_anthropic_api import FakeMessagesAPI, text, thinking, tool_use

QUESTION = "How would dendritic cells look in the context of monocytes and B cells?"

VALID_PLAN = {
    "split_column": "bulk_labels",
    "split_values": ["CD14+ Monocyte", "CD19+ B"],
    "query_obs_filter": {"bulk_labels": ["Dendritic"]},
    "prompt_obs_filter": None,
    "num_steps": 10,
    "rationale": "Dendritic cells are the query; monocytes and B cells define the two contexts.",
}


def _request(path: Path, **fields: object) -> AnalysisRequest:
    return AnalysisRequest(question=QUESTION, prompt_uri=str(path), query_uri=str(path), **fields)


def _plan(settings: AgentSettings, request: AnalysisRequest, path: Path, documents: str = ""):
    data = PlanData.from_uris(str(path), str(path))
    with ClaudeClient(settings, api_key=FAKE_KEY) as client:
        return plan_with_claude(client, request, data, documents)


def test_multi_turn_tool_use_plan(claude_settings: AgentSettings, fake_api: FakeMessagesAPI, pbmc_h5ad: Path) -> None:
    fake_api.reply([thinking("Look at the data first."), tool_use("describe_dataset", {})])
    fake_api.reply([tool_use("show_values", {"which": "prompt", "column": "bulk_labels", "contains": "mono"})])
    fake_api.reply(
        [tool_use("count_cells", {"which": "query", "obs_filter": {"bulk_labels": ["Dendritic"]}, "group_by": "phase"})]
    )
    fake_api.reply([text("Plan ready."), tool_use("submit_plan", VALID_PLAN)], cache_read_input_tokens=900)

    plan = _plan(claude_settings, _request(pbmc_h5ad), pbmc_h5ad, documents="Protocol: PBMCs from one donor.")

    assert plan.split_column == "bulk_labels"
    assert plan.split_values == ["CD14+ Monocyte", "CD19+ B"]
    assert plan.query_obs_filter == {"bulk_labels": ["Dendritic"]}
    assert plan.planned_by == "model claude-sonnet-5-5"
    spec = plan.to_job_spec(
        prompt_uri="file:///p.h5ad", query_uri="file:///p.h5ad", checkpoint_uri="file:///ckpt",
        gene_list_uri="file:///genes.pkl", output_prefix="file:///out/run1",
    )
    assert (spec.split_column, spec.split_values, spec.num_steps) == ("bulk_labels", ["CD14+ Monocyte", "CD19+ B"], 10)

    # Four replies, their tokens summed and priced at the settings' rates.
    assert plan.usage is not None and plan.usage.requests == 4
    assert plan.usage.input_tokens == 4 * 1200 and plan.usage.cache_read_input_tokens == 900
    expected = (4 * 1200 * 2.0 + 4 * 80 * 10.0 + 900 * 0.2) / 1e6
    assert plan.usage.estimated_cost_usd == pytest.approx(expected)

    first, second, third, fourth = fake_api.requests
    assert first.path == "/v1/messages"
    assert FAKE_KEY in (first.headers.get("x-api-key"), first.headers.get("authorization", "").removeprefix("Bearer "))
    # The fixed system prompt and tool definitions are marked for prompt caching; no sampling params sent.
    assert first.body["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert first.body["tools"][-1]["cache_control"] == {"type": "ephemeral"}
    assert [t["name"] for t in first.body["tools"]] == ["describe_dataset", "count_cells", "show_values", "submit_plan"]
    assert "temperature" not in first.body
    # The newest message is a cache breakpoint too (4 at most: tools, system, this one).
    assert fourth.body["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    assert all("cache_control" not in b for m in fourth.body["messages"][:-1] for b in m["content"] if isinstance(b, dict))
    assert QUESTION in first.body["messages"][0]["content"][0]["text"]
    assert "PBMCs from one donor" in first.body["messages"][0]["content"][0]["text"]
    # Tool results are computed from the staged h5ad.
    described = json.loads(second.tool_results()[0]["content"])
    bulk = next(c for c in described["prompt"]["obs_columns"] if c["name"] == "bulk_labels")
    assert bulk["cells_per_value"]["Dendritic"] == 240 and described["query"] == "same file as prompt"
    shown = json.loads(third.tool_results()[0]["content"])
    assert shown["cells_per_value"] == {"CD14+ Monocyte": 129}
    counted = json.loads(fourth.tool_results()[0]["content"])
    assert counted["cells"] == 240 and sum(counted["cells_per_value"].values()) == 240
    # The thinking block went back to the model unchanged, as the API requires.
    assert second.body["messages"][1]["content"][0] == thinking("Look at the data first.")


def test_invalid_plan_gets_one_repair_turn(claude_settings: AgentSettings, fake_api: FakeMessagesAPI, pbmc_h5ad: Path) -> None:
    wrong = {**VALID_PLAN, "split_values": ["Monocytes", "CD19+ B", "CD34+"], "query_obs_filter": {"celltype": ["DC"]}}
    fake_api.reply([tool_use("submit_plan", wrong)])
    fake_api.reply([tool_use("submit_plan", VALID_PLAN)])

    plan = _plan(claude_settings, _request(pbmc_h5ad), pbmc_h5ad)

    assert plan.split_values == VALID_PLAN["split_values"]
    repair = fake_api.requests[1].tool_results()[0]
    assert repair["is_error"] is True
    assert "column 'celltype'" in repair["content"] and "'bulk_labels'" in repair["content"]
    assert "only repair turn" in repair["content"]


def test_split_value_with_too_few_cells_is_named(claude_settings: AgentSettings, fake_api: FakeMessagesAPI, pbmc_h5ad: Path) -> None:
    thin = {**VALID_PLAN, "split_values": ["CD14+ Monocyte", "CD4+/CD45RA+/CD25- Naive T"]}  # 8 cells
    fake_api.reply([tool_use("submit_plan", thin)])
    fake_api.reply([tool_use("submit_plan", VALID_PLAN)])

    _plan(claude_settings, _request(pbmc_h5ad), pbmc_h5ad)

    repair = fake_api.requests[1].tool_results()[0]["content"]
    assert "'CD4+/CD45RA+/CD25- Naive T' has 8 prompt cells; at least 10 needed" in repair


def test_plan_still_invalid_after_repair_fails_clearly(
    claude_settings: AgentSettings, fake_api: FakeMessagesAPI, pbmc_h5ad: Path
) -> None:
    fake_api.reply([tool_use("submit_plan", {**VALID_PLAN, "split_column": "cell_type"})])
    fake_api.reply([tool_use("submit_plan", {**VALID_PLAN, "split_values": ["Monocytes"]})])

    with pytest.raises(PlanInvalid) as failure:
        _plan(claude_settings, _request(pbmc_h5ad), pbmc_h5ad)

    message = str(failure.value)
    assert "still does not fit the data after its one repair turn" in message
    assert "split value 'Monocytes' is not a value of prompt column 'bulk_labels'" in message
    assert "'CD14+ Monocyte'" in message  # says what the values are
    assert len(fake_api.requests) == 2  # no third model call


def test_overloaded_529_is_retried_by_the_sdk(claude_settings: AgentSettings, fake_api: FakeMessagesAPI, pbmc_h5ad: Path) -> None:
    fake_api.error(529, "overloaded_error", "Overloaded", headers={"retry-after-ms": "5"})
    fake_api.reply([tool_use("submit_plan", VALID_PLAN)])

    plan = _plan(claude_settings, _request(pbmc_h5ad), pbmc_h5ad)

    assert plan.split_column == "bulk_labels"
    assert len(fake_api.requests) == 2
    assert fake_api.requests[0].body == fake_api.requests[1].body  # the same request, sent again
    assert plan.usage is not None and plan.usage.requests == 1


def test_spend_limit_429_is_not_retried(claude_settings: AgentSettings, fake_api: FakeMessagesAPI, pbmc_h5ad: Path) -> None:
    fake_api.error(
        429, "rate_limit_error", "Your organization has reached its monthly spend limit.",
        error_code="enforced_spend_limit_reached",
    )
    fake_api.reply([tool_use("submit_plan", VALID_PLAN)])  # would succeed if the SDK retried

    with pytest.raises(SpendLimitReached, match="spend limit reached .*enforced_spend_limit_reached.*Retrying will not help"):
        _plan(claude_settings, _request(pbmc_h5ad), pbmc_h5ad)
    assert len(fake_api.requests) == 1


def test_plain_rate_limit_429_is_retried(claude_settings: AgentSettings, fake_api: FakeMessagesAPI, pbmc_h5ad: Path) -> None:
    fake_api.error(429, "rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit",
                   headers={"retry-after-ms": "5"})
    fake_api.reply([tool_use("submit_plan", VALID_PLAN)])

    assert _plan(claude_settings, _request(pbmc_h5ad), pbmc_h5ad).split_column == "bulk_labels"
    assert len(fake_api.requests) == 2


def test_request_fields_win_over_the_model(claude_settings: AgentSettings, fake_api: FakeMessagesAPI, pbmc_h5ad: Path) -> None:
    request = _request(pbmc_h5ad, num_steps=25, query_obs_filter={"phase": ["S"]}, seed=7, precision="fp32")
    fake_api.reply([tool_use("submit_plan", VALID_PLAN)])  # proposes 10 steps and Dendritic queries

    plan = _plan(claude_settings, request, pbmc_h5ad)

    assert (plan.num_steps, plan.query_obs_filter, plan.seed, plan.precision) == (25, {"phase": ["S"]}, 7, "fp32")
    prompt = fake_api.requests[0].body["messages"][0]["content"][0]["text"]
    assert '<fixed_by_request>\n{"query_obs_filter": {"phase": ["S"]}, "num_steps": 25}' in prompt


def test_a_model_that_never_submits_fails_after_max_turns(
    claude_settings: AgentSettings, fake_api: FakeMessagesAPI, pbmc_h5ad: Path
) -> None:
    settings = claude_settings.model_copy(update={"max_tool_turns": 3})
    for _ in range(3):
        fake_api.reply([tool_use("describe_dataset", {})])

    with pytest.raises(PlanInvalid, match="did not submit a plan within 3 replies"):
        _plan(settings, _request(pbmc_h5ad), pbmc_h5ad)


def test_tool_errors_list_what_exists(claude_settings: AgentSettings, fake_api: FakeMessagesAPI, pbmc_h5ad: Path) -> None:
    fake_api.reply([tool_use("count_cells", {"which": "prompt", "obs_filter": {"cell_type": ["DC"]}})])
    fake_api.reply([tool_use("submit_plan", VALID_PLAN)])

    _plan(claude_settings, _request(pbmc_h5ad), pbmc_h5ad)

    result = fake_api.requests[1].tool_results()[0]
    assert result["is_error"] is True
    assert "no obs column 'cell_type'" in result["content"] and "bulk_labels" in result["content"]
