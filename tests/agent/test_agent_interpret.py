"""Claude interprets a prediction summary: the real SDK against the fake Messages API."""

from __future__ import annotations

import json

from clients.llm.claude import ClaudeClient
from clients.llm.settings import AgentSettings
from inference.contract import PredictionSummary, SplitSummary
from tasks.agent.claude import interpret_with_claude
from tasks.agent.plan import RunPlan
from clients.ocr.models import DocumentText, PageText
from tests.agent.conftest import FAKE_KEY, change
from tests.agent.grounding_examples import EVALUATION
from tests.agent.grounding_examples import PLAN as G_PLAN
from tests.agent.grounding_examples import SUMMARY as G_SUMMARY
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
                     top_up=[change("S100A8", 2.0), change("LYZ", 1.6)], top_down=[change("CD74", -0.5)]),
        SplitSummary(split_value="CD19+ B", cells=240, mean_shift=0.12, top_up=[change("CD79A", 1.1)], top_down=[]),
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
    assert "never invent" in sent.body["system"][0]["text"]
    payload = json.loads(sent.body["messages"][0]["content"])
    assert payload["model_trained"] is False
    assert payload["de"][0]["top_up"][0] == {"gene": "S100A8", "lfc": 2.0, "q": 0.0001, "fraction_same_direction": 0.9}
    assert payload["score_card"] is None  # no grounding for this run: nothing to read, nothing made up
    assert payload["question"] == "How do DCs look near monocytes?"


def test_interpretation_request_carries_the_score_card_de_genes_and_document_pages(
    claude_settings: AgentSettings, fake_api: FakeMessagesAPI
) -> None:
    document = DocumentText(
        uri="file:///docs/protocol.pdf", sha256="0" * 64, media_type="application/pdf",
        pages=[PageText(page_number=3, text="IFN-gamma induces CXCL10 within hours.", engine="text-layer")],
    )
    fake_api.reply([text("IFNG raises **CXCL10** (protocol.pdf, p. 3); composite 7/10.")])

    with ClaudeClient(claude_settings, api_key=FAKE_KEY) as client:
        findings = interpret_with_claude(
            client, G_PLAN, G_SUMMARY, "What does IFNG do?", EVALUATION, [document.markdown()]
        )

    content = fake_api.requests[0].body["messages"][0]["content"]
    payload = json.loads(content.split("\n\n<documents>")[0])
    card = payload["score_card"]
    assert card["composite"] == 7 and card["formula_version"] == "grounding-1"
    assert {c["name"]: c["score"] for c in card["components"]}["target_activation"] == 8.25
    assert {c["name"]: c["score"] for c in card["components"]}["backtest"] is None
    ifng = payload["de"][0]
    assert ifng["reference"] == "control PBS (synthetic, paired by query cell)"
    assert (ifng["significant_up"], ifng["significant_down"]) == (31, 12)
    assert ifng["top_up"][0] == {"gene": "CXCL10", "lfc": 2.4, "q": 1e-09, "fraction_same_direction": 0.97}
    assert payload["enrichment"][0]["set_id"] == "GO:0034341" and payload["enrichment"][0]["q"] == 2e-05
    assert payload["plan"]["control_value"] == "PBS"
    assert any("query-as-control" in c for c in payload["caveats"])
    assert "Identity markers come from 40 cells" in " ".join(payload["caveats"])  # the score card's caveats too
    assert "protocol.pdf · page 3 of 1" in content and "IFN-gamma induces CXCL10" in content
    assert "(protocol.pdf, p. 3)" in findings.markdown
    assert "scores are computed by code" in findings.markdown
    assert any("descriptive" in c for c in findings.caveats)


def test_a_reply_without_text_falls_back_to_the_offline_summary(
    claude_settings: AgentSettings, fake_api: FakeMessagesAPI
) -> None:
    fake_api.reply([thinking("...")], stop_reason="max_tokens")

    with ClaudeClient(claude_settings, api_key=FAKE_KEY) as client:
        findings = interpret_with_claude(client, PLAN, SUMMARY)

    assert findings.written_by.startswith("offline summary")
    assert "no language model read these results" in findings.markdown
    assert findings.usage is not None and findings.usage.requests == 1  # the call was still paid for
