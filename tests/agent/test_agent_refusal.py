"""Claude declines a step (``stop_reason: "refusal"``): the real SDK against the fake Messages API.

A refusal is said as a refusal, at the turn it happens: what was refused, and the way on (rephrase,
or the offline planner). It is not turned into "did not submit a plan" after the turns run out.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from clients.llm.claude import ClaudeClient, ModelRefused
from clients.llm.settings import AgentSettings
from tasks.agent.claude import interpret_with_claude, plan_with_claude
from tasks.agent.plan_data import PlanData
from tasks.request import AnalysisRequest
from tests.agent.conftest import FAKE_KEY
from tests.agent.test_agent_interpret import PLAN, SUMMARY
from tests.fake_anthropic_api import FakeMessagesAPI, tool_use

REPO = Path(__file__).resolve().parents[2]


def test_a_refused_plan_says_refusal_and_the_way_on_after_one_reply(
    claude_settings: AgentSettings, fake_api: FakeMessagesAPI, pbmc_h5ad: Path
) -> None:
    fake_api.reply([tool_use("describe_dataset", {})])
    fake_api.refusal(category="bio", explanation="The request could enable biological harm.")
    request = AnalysisRequest(question="How would dendritic cells look?", prompt_uri=str(pbmc_h5ad), query_uri=str(pbmc_h5ad))
    data = PlanData.from_uris(str(pbmc_h5ad), str(pbmc_h5ad))

    with ClaudeClient(claude_settings, api_key=FAKE_KEY) as client, pytest.raises(ModelRefused) as refused:
        plan_with_claude(client, request, data)

    message = str(refused.value)
    assert len(fake_api.requests) == 2  # no nudges after the refusal, no turns spent on it
    assert "refused planning the run" in message and "category bio" in message
    assert "biological harm" in message
    assert "rephrase" in message and "ANTHROPIC_API_KEY" in message and "offline planner" in message
    assert "did not submit a plan" not in message
    assert client.usage.requests == 2  # the refused reply's tokens are counted too


def test_a_refused_interpretation_falls_back_to_the_offline_summary_with_the_refusal_as_a_caveat(
    claude_settings: AgentSettings, fake_api: FakeMessagesAPI
) -> None:
    fake_api.refusal(category=None)

    with ClaudeClient(claude_settings, api_key=FAKE_KEY) as client:
        findings = interpret_with_claude(client, PLAN, SUMMARY, question="How do DCs look near monocytes?")

    assert findings.written_by.startswith("offline")
    assert any("refused to interpret" in caveat and "rephrase" in caveat for caveat in findings.caveats)
    assert findings.usage is not None and findings.usage.requests == 1


def test_the_agent_modules_import_without_the_anthropic_sdk() -> None:
    """The SDK costs seconds of imports; only a step that makes a request may pay for it."""
    probe = "import sys, tasks.agent.claude, clients.llm.claude; print('anthropic' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
