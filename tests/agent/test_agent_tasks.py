"""The agent's Prefect tasks: persisted, cached results and logs that keep secrets out."""

from __future__ import annotations

import asyncio
import logging
import time
from uuid import UUID
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect import flow
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import Artifact, Log
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    LogFilter,
    LogFilterFlowRunId,
    TaskRunFilter,
)
from prefect.client.schemas.sorting import ArtifactSort
from prefect.logging.handlers import APILogHandler
from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

from clients.llm.settings import AgentSettings
from clients.settings import get_settings
from tasks.request import AnalysisRequest
from inference.contract import PredictionSummary, SplitSummary
from tasks.agent.steps import anthropic_api_key, interpret, plan_run
from tasks.agent.plan import Findings, RunPlan
from tasks.agent.plan_checks import PlanInvalid
from tasks.staging import StagedInput, stage_input, validate_input
from tests.agent.conftest import FAKE_KEY, change
from tests.fake_anthropic_api import FakeMessagesAPI, text, thinking, tool_use

PLAN_INPUT = {
    "split_column": "bulk_labels",
    "split_values": ["CD14+ Monocyte", "CD19+ B"],
    "query_obs_filter": {"bulk_labels": ["Dendritic"]},
    "num_steps": 10,
    "rationale": "Dendritic cells as the query; monocyte and B cell contexts.",
}
SUMMARY = PredictionSummary(
    mode="generate", model_trained=False, query_cells=240, genes=765,
    splits=[SplitSummary(split_value="CD14+ Monocyte", cells=240, mean_shift=0.3, top_up=[change("LYZ", 1.2)], top_down=[])],
)


@pytest.fixture(autouse=True)
def results_in_tmp(tmp_path: Path, prefect_api: None) -> Iterator[None]:
    """Persisted task results go to this test's directory, not the user's Prefect home."""
    with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: tmp_path / "prefect-results"}):
        yield


@flow
def plan_and_interpret(request: AnalysisRequest, documents: str) -> tuple[RunPlan, Findings]:
    plan = plan_run(request, request.prompt_uri, request.query_uri, document_text=documents)
    return plan, interpret(plan, SUMMARY, question=request.question)


@flow
def stage_and_plan(request: AnalysisRequest) -> tuple[StagedInput, RunPlan, Findings]:
    facts = validate_input(request.prompt_uri, counts_required=False)  # pbmc68k_reduced holds no raw counts
    staged = stage_input(request.prompt_uri, facts)
    plan = plan_run(request, staged, staged)
    return staged, plan, interpret(plan, SUMMARY)


def test_offline_plan_on_staged_inputs(pbmc_h5ad: Path, settings: object, no_key: None) -> None:
    request = AnalysisRequest(question="Monocytes versus B cells?", prompt_uri=str(pbmc_h5ad), query_uri=str(pbmc_h5ad))

    staged, plan, findings = stage_and_plan(request)

    assert plan.planned_by == "offline planner (no ANTHROPIC_API_KEY)" and plan.split_column == "bulk_labels"
    assert findings.written_by.startswith("offline summary") and not findings.model_trained
    spec = plan.to_job_spec(
        prompt_uri=staged.uri, query_uri=staged.uri, checkpoint_uri="file:///ckpt",
        gene_list_uri="file:///genes.pkl", output_prefix="file:///out/1",
    )
    assert spec.prompt_uri == staged.uri and spec.split_values == plan.split_values


def test_a_rerun_reads_the_persisted_plan_instead_of_paying_again(
    claude_settings: AgentSettings, fake_api: FakeMessagesAPI, pbmc_h5ad: Path
) -> None:
    request = AnalysisRequest(question="Dendritic cells near monocytes?", prompt_uri=str(pbmc_h5ad), query_uri=str(pbmc_h5ad))
    fake_api.reply([tool_use("describe_dataset", {})])
    fake_api.reply([tool_use("submit_plan", PLAN_INPUT)])
    fake_api.reply([text("Monocyte context raises LYZ.")])

    first = plan_and_interpret(request, "protocol text")
    calls_after_first = len(fake_api.requests)
    second = plan_and_interpret(request, "protocol text")  # a retried run: same inputs, same settings

    assert calls_after_first == 3 and len(fake_api.requests) == 3  # nothing paid twice
    assert second == first
    assert first[0].planned_by == "model claude-sonnet-5-5" and first[1].written_by == "model claude-sonnet-5-5"

    changed = request.model_copy(update={"num_steps": 20})
    fake_api.reply([tool_use("submit_plan", PLAN_INPUT)])
    fake_api.reply([text("Again.")])
    third_plan, _ = plan_and_interpret(changed, "protocol text")
    assert third_plan.num_steps == 20 and len(fake_api.requests) == 5  # a different request is planned anew


def test_no_key_or_message_content_in_logs_or_artifacts(
    claude_settings: AgentSettings,
    fake_api: FakeMessagesAPI,
    pbmc_h5ad: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    question = "Which quokka-lighthouse-7731 programmes change near monocytes?"
    document = "DOCUMENT-SENTINEL-8812: donors were sampled at dawn."
    secrets = [FAKE_KEY, "quokka-lighthouse-7731", "DOCUMENT-SENTINEL-8812", "THINKING-SENTINEL-4410", "TOOL-TEXT-SENTINEL"]
    caplog.set_level(logging.DEBUG)  # every logger, the SDK's and httpx2's included, at its most talkative
    request = AnalysisRequest(question=question, prompt_uri=str(pbmc_h5ad), query_uri=str(pbmc_h5ad))
    fake_api.reply([thinking("THINKING-SENTINEL-4410"), text("TOOL-TEXT-SENTINEL"), tool_use("describe_dataset", {})])
    fake_api.reply([tool_use("submit_plan", PLAN_INPUT)])
    fake_api.reply([thinking("THINKING-SENTINEL-4410"), text("Monocyte context raises LYZ.")])

    state = plan_and_interpret(request, document, return_state=True)
    assert state.is_completed()
    flow_run_id = state.state_details.flow_run_id

    APILogHandler().flush()  # send what the log worker still holds
    logs, artifacts = asyncio.run(_logs_and_artifacts(flow_run_id, until="Findings by"))
    prefect_logs = "\n".join(entry.message for entry in logs)
    captured = capfd.readouterr()
    everything = {
        "prefect api logs": prefect_logs,
        "python logging": caplog.text,
        "stdout": captured.out,
        "stderr": captured.err,
        "artifacts": "\n".join(f"{a.key} {a.description} {a.data}" for a in artifacts),
    }

    # The logs are not empty: the steps did report, and the SDK logged at DEBUG.
    assert "Plan by model claude-sonnet-5-5" in prefect_logs and "Findings by model" in prefect_logs
    assert "Sending HTTP Request" in caplog.text
    for where, content in everything.items():
        for secret in secrets:
            assert secret not in content, f"{secret!r} leaked into the {where}"


async def _logs_and_artifacts(flow_run_id: UUID, until: str) -> tuple[list[Log], list[Artifact]]:
    """The run's logs (waiting, bounded, for a line containing ``until``) and its artifacts."""
    async with get_client() as client:
        deadline = time.monotonic() + 30
        while True:  # the API log worker writes in batches
            logs = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200, offset=0
            )
            if any(until in entry.message for entry in logs) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        # This server version rejects the client's null defaults: every field is given.
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])),
            flow_run_filter=FlowRunFilter(),
            task_run_filter=TaskRunFilter(),
            limit=100,
            offset=0,
            sort=ArtifactSort.CREATED_DESC,
        )
    return logs, artifacts


def test_the_key_can_come_from_a_prefect_secret_block(
    claude_settings: AgentSettings, fake_api: FakeMessagesAPI, pbmc_h5ad: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Secret(value="sk-ant-from-a-secret-block").save("agent-test-anthropic-key", overwrite=True)
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    monkeypatch.setenv("STACKFLOWS_AGENT__API_KEY_SECRET_BLOCK", "agent-test-anthropic-key")
    get_settings.cache_clear()
    request = AnalysisRequest(question="Secret-block planning?", prompt_uri=str(pbmc_h5ad), query_uri=str(pbmc_h5ad))
    fake_api.reply([tool_use("submit_plan", PLAN_INPUT)])
    fake_api.reply([text("Findings.")])

    plan, _ = plan_and_interpret(request, "")

    assert plan.planned_by == "model claude-sonnet-5-5"
    assert fake_api.requests[0].headers["authorization"] == "Bearer sk-ant-from-a-secret-block"


def test_a_missing_secret_block_is_named(claude_settings: AgentSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    settings = claude_settings.model_copy(update={"api_key_secret_block": "no-such-block-7"})
    with pytest.raises(ValueError, match="Secret block 'no-such-block-7', which does not exist"):
        anthropic_api_key(settings)


def test_a_bad_request_fails_before_any_model_call(
    claude_settings: AgentSettings, fake_api: FakeMessagesAPI, pbmc_h5ad: Path
) -> None:
    request = AnalysisRequest(
        question="Contexts by tissue?", prompt_uri=str(pbmc_h5ad), query_uri=str(pbmc_h5ad), split_column="tissue"
    )

    with pytest.raises(PlanInvalid, match="split_column names column 'tissue'.*columns: 'bulk_labels'"):
        plan_and_interpret(request, "")
    assert fake_api.requests == []
