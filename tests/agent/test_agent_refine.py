"""Refinement between rounds: Claude reads the earlier rounds (against the fake Messages API) and plans
the next one or stops; the plan_round task is persisted, so the same history asks nothing twice."""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect import flow
from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

from clients.llm.claude import ClaudeClient
from clients.llm.settings import AgentSettings
from inference.contract import PredictionSummary, SplitSummary
from tasks.agent.plan import RunPlan
from tasks.agent.plan_checks import PlanInvalid
from tasks.agent.plan_data import PlanData
from tasks.agent.refine import refine_with_claude
from tasks.agent.steps import plan_round, plan_run
from tasks.grounding.caveats import UNTRAINED
from tasks.grounding.models import EnrichmentRow, ScoreComponent
from tasks.loop.models import RefinedPlan, RoundRecord, plan_identity
from tasks.request import AnalysisRequest
from tests.agent.conftest import FAKE_KEY, change
from tests.fake_anthropic_api import FakeMessagesAPI, tool_use
from tests.loop.records import record

QUESTION = "How would dendritic cells look in the context of monocytes and B cells?"
ROUND_1 = {
    "split_column": "bulk_labels",
    "split_values": ["CD14+ Monocyte", "CD19+ B"],
    "query_obs_filter": {"bulk_labels": ["Dendritic"]},
    "num_steps": 10,
    "rationale": "Dendritic cells are the query; monocytes and B cells define the two contexts.",
}
ROUND_2 = {
    **ROUND_1,
    "split_values": ["CD14+ Monocyte", "CD56+ NK"],
    "rationale": "B cells moved nothing the question expects; NK cells are the other innate context.",
}
BUDGET = "2 rounds left; GPU-seconds 40 of 100 spent."


def _request(path: Path, **fields: object) -> AnalysisRequest:
    return AnalysisRequest(question=QUESTION, prompt_uri=str(path), query_uri=str(path), **fields)


def _scored(plan: RunPlan, k: int = 1, composite: int | None = 4) -> RoundRecord:
    """Round ``k`` of ``plan``: two components scored, one not assessed, DE genes, an enriched set, a caveat."""
    base = record(k, composite, plan=plan)
    components = [
        ScoreComponent(name="pathway_coherence", score=3.0, basis="2 of 6 expected sets enriched in their direction"),
        ScoreComponent(name="target_activation", score=5.0, basis="LYZ up as expected; CD74 against"),
        ScoreComponent(name="identity_preservation", score=None, basis="not assessed: no cell type column"),
    ]
    enriched = EnrichmentRow(
        split_value="CD14+ Monocyte", direction="up", set_id="GO:0019882", name="antigen processing and presentation",
        set_size=80, overlap=9, de_genes=40, background=765, p_value=1e-5, q_value=2.5e-4, expected="up",
        genes=["CD74", "HLA-DRA"],
    )
    evaluation = base.evaluation.model_copy(
        update={"components": components, "enrichment": [enriched], "caveats": ["ROUND-CAVEAT-5531: few cells"]}
    )
    summary = PredictionSummary(
        mode="generate", model_trained=False, query_cells=240, genes=765,
        splits=[
            SplitSummary(
                split_value=value, cells=240, significant_up=12, significant_down=3, mean_shift=0.3,
                top_up=[change("LYZ", 1.2345, q=2e-5)], top_down=[change("CD74", -0.8, q=3e-3)],
            )
            for value in plan.split_values
        ],
    )
    return base.model_copy(update={"evaluation": evaluation, "summary": summary})


def _plan(fields: dict[str, Any]) -> RunPlan:
    return RunPlan(**fields, planned_by="model claude-sonnet-5-5")


def _refine(settings: AgentSettings, request: AnalysisRequest, path: Path, history: list[RoundRecord]) -> RefinedPlan:
    data = PlanData.from_uris(str(path), str(path))
    with ClaudeClient(settings, api_key=FAKE_KEY) as client:
        return refine_with_claude(client, request, data, history, "Protocol: PBMCs from one donor.", BUDGET)


def _rounds_sent(body: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """The first user message's text, and the rounds it carried (parsed from its <rounds> JSON)."""
    message = body["messages"][0]["content"]
    text = message if isinstance(message, str) else message[0]["text"]
    rounds = text.split("<rounds>\n", 1)[1].split("\n</rounds>", 1)[0]
    return text, json.loads(rounds)


def test_the_model_reads_round_one_and_its_plan_is_checked(
    claude_settings: AgentSettings, fake_api: FakeMessagesAPI, pbmc_h5ad: Path
) -> None:
    request = _request(pbmc_h5ad, num_steps=20)
    history = [_scored(_plan(ROUND_1))]
    fake_api.reply([tool_use("submit_plan", {**ROUND_2, "split_values": ["Monocytes", "CD56+ NK"]})])
    fake_api.reply([tool_use("submit_plan", ROUND_2)])

    refined = _refine(claude_settings, request, pbmc_h5ad, history)

    # The plan went through the checked contract: a repair turn, the request's num_steps put back.
    assert refined.plan is not None and refined.stop_reason == ""
    assert refined.plan.split_values == ["CD14+ Monocyte", "CD56+ NK"] and refined.plan.num_steps == 20
    assert refined.planned_by == refined.plan.planned_by == "model claude-sonnet-5-5"
    assert refined.usage is not None and refined.usage.requests == 2
    repair = fake_api.requests[1].tool_results()[0]
    assert repair["is_error"] and "'Monocytes' is not a value" in repair["content"] and "only repair turn" in repair["content"]

    first = fake_api.requests[0].body
    assert [t["name"] for t in first["tools"]][-2:] == ["submit_plan", "stop_loop"]
    system = " ".join(block["text"] for block in first["system"])
    assert "The scores are computed by code" in system and "never restate a score as your own" in system
    text, rounds = _rounds_sent(first)
    (sent,) = rounds
    assert sent["plan"]["split_values"] == ["CD14+ Monocyte", "CD19+ B"] and sent["plan"]["control_value"] is None
    components = {c["name"]: c for c in sent["scores"]["components"]}
    assert components["pathway_coherence"]["score"] == 3.0
    assert components["target_activation"]["basis"] == "LYZ up as expected; CD74 against"
    assert components["identity_preservation"]["score"] is None and not components["identity_preservation"]["assessed"]
    assert sent["scores"]["composite"] == 4
    monocytes = next(c for c in sent["top_de"] if c["context"] == "CD14+ Monocyte")
    assert monocytes["top_up"] == [{"gene": "LYZ", "lfc": 1.234, "q": 2e-5}]
    assert monocytes["top_down"] == [{"gene": "CD74", "lfc": -0.8, "q": 0.003}]
    assert sent["top_enriched_sets"][0]["set_id"] == "GO:0019882" and sent["top_enriched_sets"][0]["q"] == 0.00025
    assert "ROUND-CAVEAT-5531: few cells" in sent["caveats"] and UNTRAINED in sent["caveats"]
    assert BUDGET in text and "PBMCs from one donor" in text and QUESTION in text
    assert '<fixed_by_request>\n{"num_steps": 20}' in text
    tried = json.loads(text.split("<plans_tried>\n", 1)[1].split("\n</plans_tried>", 1)[0])
    assert tried == [sent["plan"]]


def test_stop_loop_gives_no_plan_and_the_models_reason(
    claude_settings: AgentSettings, fake_api: FakeMessagesAPI, pbmc_h5ad: Path
) -> None:
    fake_api.reply([tool_use("stop_loop", {"reason": "  "})])  # a stop needs a reason
    fake_api.reply([tool_use("stop_loop", {"reason": "No context left is closer to the question."})])

    refined = _refine(claude_settings, _request(pbmc_h5ad), pbmc_h5ad, [_scored(_plan(ROUND_1))])

    assert refined.plan is None and refined.stop_reason == "No context left is closer to the question."
    assert refined.planned_by == "model claude-sonnet-5-5" and refined.usage is not None and refined.usage.requests == 2
    asked = fake_api.requests[1].tool_results()[0]
    assert asked["is_error"] and "stop_loop needs a reason" in asked["content"]


def test_a_plan_already_tried_comes_back_as_it_is(
    claude_settings: AgentSettings, fake_api: FakeMessagesAPI, pbmc_h5ad: Path
) -> None:
    round_1 = _plan(ROUND_1)
    fake_api.reply([tool_use("submit_plan", ROUND_1)])

    refined = _refine(claude_settings, _request(pbmc_h5ad), pbmc_h5ad, [_scored(round_1)])

    assert refined.plan is not None and plan_identity(refined.plan) == plan_identity(round_1)
    assert len(fake_api.requests) == 1  # not argued with: the loop's stopping rule names it


@pytest.fixture
def results_in_tmp(tmp_path: Path, prefect_api: None) -> Iterator[None]:
    """Persisted task results go to this test's directory, not the user's Prefect home."""
    with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: tmp_path / "prefect-results"}):
        yield


@flow
def refine_round(request: AnalysisRequest, history: list[RoundRecord]) -> RefinedPlan:
    return plan_round(request, request.prompt_uri, request.query_uri, "Protocol: PBMCs.", history, BUDGET)


@flow
def first_plans(request: AnalysisRequest) -> tuple[RunPlan, RefinedPlan]:
    return plan_run(request, request.prompt_uri, request.query_uri), plan_round(
        request, request.prompt_uri, request.query_uri, "", []
    )


def test_two_rounds_through_plan_round_and_a_rerun_asks_nothing_again(
    claude_settings: AgentSettings, fake_api: FakeMessagesAPI, pbmc_h5ad: Path, results_in_tmp: None
) -> None:
    request = _request(pbmc_h5ad)
    fake_api.reply([tool_use("describe_dataset", {})])
    fake_api.reply([tool_use("submit_plan", ROUND_1)])
    first = refine_round(request, [])
    assert first.plan is not None and first.plan.split_values == ROUND_1["split_values"]
    assert len(fake_api.requests) == 2 and "<rounds>" not in json.dumps(fake_api.requests[0].body)  # round 1: a plain plan

    history = [_scored(first.plan)]
    fake_api.reply([tool_use("submit_plan", ROUND_2)])
    second = refine_round(request, history)
    assert second.plan is not None and second.plan.split_values == ["CD14+ Monocyte", "CD56+ NK"]
    assert len(fake_api.requests) == 3
    _, (sent,) = _rounds_sent(fake_api.requests[2].body)
    assert {c["name"]: c["score"] for c in sent["scores"]["components"]} == {
        "pathway_coherence": 3.0, "target_activation": 5.0, "identity_preservation": None,
    }
    assert sent["top_de"][0]["top_up"][0]["gene"] == "LYZ"

    assert refine_round(request, history) == second  # a retried run: the persisted answer, no request
    assert refine_round(request, []) == first
    assert len(fake_api.requests) == 3

    fake_api.reply([tool_use("stop_loop", {"reason": "Round 1 already answers it."})])
    rescored = [_scored(first.plan, composite=6)]  # a different history is a new question
    stopped = refine_round(request, rescored)
    assert stopped.plan is None and stopped.stop_reason == "Round 1 already answers it."
    assert len(fake_api.requests) == 4


def test_round_one_is_planned_as_plan_run_plans_it(pbmc_h5ad: Path, settings: object, no_key: None, results_in_tmp: None) -> None:
    plan, refined = first_plans(_request(pbmc_h5ad))

    assert refined == RefinedPlan(plan=plan, planned_by=plan.planned_by, usage=None)
    assert plan.planned_by == "offline planner (no ANTHROPIC_API_KEY)"


def test_later_offline_rounds_go_to_the_offline_refiner(
    pbmc_h5ad: Path, settings: object, no_key: None, results_in_tmp: None
) -> None:
    request = _request(pbmc_h5ad)
    round_1 = first_plans(request)[0]

    refined = refine_round(request, [_scored(round_1)])

    assert refined.plan is not None and refined.planned_by == refined.plan.planned_by
    assert refined.planned_by.startswith("offline") and refined.usage is None
    assert plan_identity(refined.plan) != plan_identity(round_1)  # an untried plan, on the same data


def test_an_offline_refiners_plan_is_checked_against_the_data(
    pbmc_h5ad: Path, settings: object, no_key: None, results_in_tmp: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The contract is guarded whoever planned: a stand-in refiner that answers a value the data lacks."""
    given: list[list[RoundRecord]] = []

    def stand_in(request: AnalysisRequest, data: PlanData, tried: list[RoundRecord], settings: AgentSettings) -> RefinedPlan:
        given.append(list(tried))
        plan = _plan({**ROUND_2, "split_values": ["CD14+ Monocyte", "Mast"]})
        return RefinedPlan(plan=plan, planned_by=plan.planned_by)

    monkeypatch.setitem(sys.modules, "tasks.agent.offline_refiner", types.SimpleNamespace(next_offline_plan=stand_in))
    history = [_scored(_plan(ROUND_1))]

    with pytest.raises(PlanInvalid, match="split value 'Mast' is not a value of prompt column 'bulk_labels'"):
        refine_round(_request(pbmc_h5ad), history)
    assert given == [history]  # the rounds themselves: the refiner builds on the best one
