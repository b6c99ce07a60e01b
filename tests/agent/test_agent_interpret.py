"""Claude interprets a prediction summary: the real SDK against the fake Messages API."""

from __future__ import annotations

import json

from clients.llm.claude import ClaudeClient
from clients.llm.settings import AgentSettings
from inference.contract import PredictionSummary, SplitSummary
from tasks.agent.claude import interpret_with_claude
from tasks.agent.plan import RunPlan
from tests.agent.conftest import FAKE_KEY
from tests.fake_anthropic_api import FakeMessagesAPI, text, thinking

PLAN = RunPlan(
    split_column="bulk_labels",
    split_values=["CD14+ Monocyte", "CD19+ B"],
    query_obs_filter={"bulk_labels": ["Dendritic"]},
    num_steps=10,
    rationale="Dendritic cells as the query; monocyte and B cell contexts.",
    planned_by="model claude-sonnet-5-5",
)
SUMMARY = PredictionSummary(
    mode="generate", model_trained=False, query_cells=240, genes=765,
    splits=[
        SplitSummary(split_value="CD14+ Monocyte", cells=240, mean_shift=0.31,
                     top_up=[("S100A8", 2.0), ("LYZ", 1.6)], top_down=[("CD74", -0.5)]),
        SplitSummary(split_value="CD19+ B", cells=240, mean_shift=0.12, top_up=[("CD79A", 1.1)], top_down=[]),
    ],
)
MODEL_TEXT = "Under the monocyte context the dendritic cells gain **S100A8** and **LYZ**."


def test_interpretation_reads_the_summary_and_flags_the_untrained_model(
    claude_settings: AgentSettings, fake_api: FakeMessagesAPI
) -> None:
    fake_api.reply([thinking("Compare the two contexts."), text(MODEL_TEXT)], input_tokens=700, output_tokens=150)

    with ClaudeClient(claude_settings, api_key=FAKE_KEY) as client:
        findings = interpret_with_claude(client, PLAN, SUMMARY, question="How do DCs look near monocytes?")

    assert MODEL_TEXT in findings.markdown
    assert "**Untrained model.**" in findings.markdown.split(MODEL_TEXT)[0]  # said before the model's text
    assert findings.written_by == "model claude-sonnet-5-5" and findings.model_trained is False
    assert any("untrained" in c for c in findings.caveats)
    assert "Compare the two contexts" not in findings.markdown  # thinking is not part of the findings
    assert findings.usage is not None and findings.usage.requests == 1 and findings.usage.output_tokens == 150

    (sent,) = fake_api.requests
    assert "tools" not in sent.body
    assert sent.body["system"][0]["cache_control"] == {"type": "ephemeral"}
    payload = json.loads(sent.body["messages"][0]["content"])
    assert payload["summary"]["model_trained"] is False
    assert payload["summary"]["splits"][0]["top_up"][0] == ["S100A8", 2.0]
    assert payload["question"] == "How do DCs look near monocytes?"


def test_a_reply_without_text_falls_back_to_the_offline_summary(
    claude_settings: AgentSettings, fake_api: FakeMessagesAPI
) -> None:
    fake_api.reply([thinking("...")], stop_reason="max_tokens")

    with ClaudeClient(claude_settings, api_key=FAKE_KEY) as client:
        findings = interpret_with_claude(client, PLAN, SUMMARY)

    assert findings.written_by.startswith("offline summary")
    assert "no language model read these results" in findings.markdown
    assert findings.usage is not None and findings.usage.requests == 1  # the call was still paid for
