"""Expectations: Claude searches the pack and the documents (real SDK, fake Messages API), code
checks what it submits; the Prefect step is cached, and offline name matching needs no key."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect import flow
from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

from clients.llm.claude import ClaudeClient
from clients.llm.settings import AgentSettings
from clients.ocr.models import DocumentText, PageText
from tasks.agent import steps
from tasks.agent.expectation_checks import merge_model_expectations, quote_on_page
from tasks.agent.expectation_tools import ExpectationsProposal, ExpectationTools, pages_of
from tasks.agent.expectations import expectations_with_claude
from tasks.grounding.expectations import request_expectations
from tasks.grounding.models import Expectations
from tasks.grounding.pack import GeneSet, KnowledgePack, OntologyTerm
from tasks.request import AnalysisRequest
from tests.agent.conftest import FAKE_KEY
from tests.fake_anthropic_api import FakeMessagesAPI, text, tool_use

MODEL = "claude-sonnet-5-5"


def _pack(version: str = "pack-test-1") -> KnowledgePack:
    sets = [
        GeneSet("GO:0034341", "response to type II interferon", frozenset({"CXCL10", "STAT1", "IRF1", "GBP1", "IDO1"}), "GO BP"),
        GeneSet("GO:0033209", "tumor necrosis factor-mediated signaling pathway", frozenset({"NFKBIA", "TNFAIP3", "RELB"}), "GO BP"),
        GeneSet("GO:0006954", "inflammatory response", frozenset({"IL1B", "TNF", "CXCL8", "NFKBIA"}), "GO BP"),
    ]
    terms = [
        OntologyTerm("CL:0001054", "CD14-positive monocyte", ("CD14+ monocyte",), ("CL:0000576",)),
        OntologyTerm("CL:0000576", "monocyte", (), ("CL:0000000",)),
    ]
    return KnowledgePack(
        version=version, sources=[], gene_sets={s.set_id: s for s in sets}, cell_types={t.term_id: t for t in terms}
    )


DOCUMENTS = [
    DocumentText(
        uri="file:///docs/protocol.pdf", sha256="a" * 64, media_type="application/pdf",
        pages=[
            PageText(page_number=1, text="Methods. PBMCs were rested; TNF lowers MYC in these donors.", engine="text-layer"),
            PageText(page_number=2, text="Results\n\nIFN-gamma   stimulation strongly\nINDUCES **CXCL10** in monocytes.",
                     engine="lightonocr"),
        ],
    )
]
GOOD_CLAIM = {"document": "protocol.pdf", "page": 2, "quote": "ifn-gamma stimulation strongly induces CXCL10",
              "gene": "CXCL10", "direction": "up"}
WRONG_PAGE = {"document": "protocol.pdf", "page": 2, "quote": "TNF lowers MYC", "gene": "MYC", "direction": "down"}
NO_PAGE = {"document": "protocol.pdf", "page": 9, "quote": "CXCL10", "gene": "CXCL10", "direction": "up"}
SUBMISSION = {
    "genes_up": ["CXCL10", "STAT1"],
    "genes_down": ["MYC"],
    "gene_sets": {"GO:0034341": "up", "GO:9999999": "up"},
    "cell_type_id": "CL:0001054",
    "claims": [GOOD_CLAIM, WRONG_PAGE, NO_PAGE],
    "rationale": "IFNG induces interferon-stimulated genes.",
}


def _request(**fields: object) -> AnalysisRequest:
    return AnalysisRequest(
        question="How do monocytes respond to interferon gamma?", prompt_uri="/data/p.h5ad", query_uri="/data/p.h5ad",
        **fields,
    )


def test_claude_searches_the_pack_and_documents_then_submits(
    claude_settings: AgentSettings, fake_api: FakeMessagesAPI
) -> None:
    pack = _pack()
    request = _request(expected_up=["IRF1"], expected_down=["STAT1"])
    fake_api.reply([tool_use("search_gene_sets", {"text": "interferon gamma response"})])
    fake_api.reply([tool_use("search_documents", {"text": "CXCL10"}), tool_use("find_cell_type", {"text": "CD14+ monocyte"})])
    fake_api.reply([text("Submitting."), tool_use("submit_expectations", SUBMISSION)])

    with ClaudeClient(claude_settings, api_key=FAKE_KEY) as client:
        expectations = expectations_with_claude(client, request, pack, DOCUMENTS, request_expectations(request, pack))

    first, second, third = fake_api.requests
    assert [t["name"] for t in first.body["tools"]] == [
        "search_gene_sets", "find_cell_type", "search_documents", "read_page", "submit_expectations",
    ]
    prompt = first.body["messages"][0]["content"][0]["text"]
    assert "interferon gamma" in prompt and '"IRF1": "up"' in prompt and "protocol.pdf" in prompt
    assert "you never score" in first.body["system"][0]["text"]
    # The tool answers come from the pack and the OCR'd pages.
    found = json.loads(second.tool_results()[0]["content"])
    assert found["gene_sets"][0] == {"set_id": "GO:0034341", "name": "response to type II interferon",
                                     "collection": "GO BP", "genes": 5}
    pages, cell = (json.loads(r["content"]) for r in third.tool_results())
    assert [(p["document"], p["page"]) for p in pages["pages"]] == [("protocol.pdf", 2)]
    assert "INDUCES **CXCL10**" in pages["pages"][0]["snippets"][0]
    assert cell["resolved"] == {"id": "CL:0001054", "label": "CD14-positive monocyte", "matched_by": "synonym"}

    # The request's own expectations stay; the model's are added where they check out.
    genes = {(g.gene, g.direction, g.source) for g in expectations.genes}
    assert genes == {("IRF1", "up", "request"), ("STAT1", "down", "request"), ("CXCL10", "up", "model"),
                     ("MYC", "down", "model")}
    assert [(s.set_id, s.direction, s.source) for s in expectations.gene_sets] == [("GO:0034341", "up", "model")]
    assert expectations.cell_type is not None and expectations.cell_type.ontology_id == "CL:0001054"
    assert expectations.cell_type.matched_by == "model"
    assert [(c.document, c.page, c.gene, c.direction) for c in expectations.claims] == [("protocol.pdf", 2, "CXCL10", "up")]
    notes = " | ".join(expectations.notes)
    assert "GO:9999999" in notes and "does not have" in notes
    assert "STAT1 up; the request's down stands" in notes
    assert "'protocol.pdf' p. 2 dropped: its quote is not on that page" in notes
    assert "'protocol.pdf' p. 9 dropped: the request has no such document page" in notes
    assert expectations.set_by == f"request + model {MODEL}" and expectations.pack_version == "pack-test-1"
    assert expectations.usage is not None and expectations.usage.requests == 3


def test_a_claim_quoting_text_not_on_its_page_is_dropped() -> None:
    pack, pages = _pack(), pages_of(DOCUMENTS)
    base = Expectations(set_by="request", pack_version=pack.version)
    moved = {**GOOD_CLAIM, "page": 1}  # the words are on page 2, not page 1

    kept = merge_model_expectations(base, ExpectationsProposal(claims=[GOOD_CLAIM, moved]), pack, pages, MODEL)

    assert [(c.page, c.quote) for c in kept.claims] == [(2, GOOD_CLAIM["quote"])]
    assert any("p. 1 dropped: its quote is not on that page" in n for n in kept.notes)
    assert quote_on_page("Strongly  INDUCES cxcl10", DOCUMENTS[0].pages[1].text)  # spacing, case, markdown
    assert not quote_on_page("strongly represses CXCL10", DOCUMENTS[0].pages[1].text)


def test_unknown_cell_type_and_bad_tool_calls_are_named() -> None:
    pack = _pack()
    base = Expectations(set_by="request", pack_version=pack.version)
    kept = merge_model_expectations(base, ExpectationsProposal(cell_type_id="CL:7777777"), pack, [], MODEL)
    assert kept.cell_type is None and any("CL:7777777" in n and "dropped" in n for n in kept.notes)

    tools = ExpectationTools(pack, DOCUMENTS)
    answer, is_error = tools.run("read_page", {"document": "protocol.pdf", "page": 5})
    assert is_error and "protocol.pdf (pages 1-2)" in answer
    answer, is_error = tools.run("search_gene_sets", {"txt": "interferon"})
    assert is_error and "Bad arguments" in answer
    assert ExpectationTools(pack, []).search_documents("CXCL10")["note"] == "the request has no documents"


@pytest.fixture
def pack_in_step(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, prefect_api: None) -> Iterator[dict[str, KnowledgePack]]:
    """The step loads this test's pack (swap current['pack'] for a new version); results go to tmp."""
    current = {"pack": _pack()}
    monkeypatch.setattr(steps, "_pack_for", lambda request: current["pack"])
    with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: tmp_path / "prefect-results"}):
        yield current


@flow
def expect(request: AnalysisRequest, documents: list[DocumentText]) -> Expectations:
    return steps.set_expectations(request, documents)


def test_the_step_is_cached_and_keyed_by_the_pack_version(
    claude_settings: AgentSettings, fake_api: FakeMessagesAPI, pack_in_step: dict[str, KnowledgePack]
) -> None:
    request = _request()
    fake_api.reply([tool_use("submit_expectations", {"genes_up": ["CXCL10"], "claims": [GOOD_CLAIM]})])

    first = expect(request, DOCUMENTS)
    second = expect(request, DOCUMENTS)  # a retried run: same request, documents, settings and pack

    assert len(fake_api.requests) == 1 and second == first
    assert [g.gene for g in first.genes] == ["CXCL10"] and len(first.claims) == 1

    pack_in_step["pack"] = _pack(version="pack-test-2")  # a new pack is a new yardstick
    fake_api.reply([tool_use("submit_expectations", {"genes_up": ["STAT1"]})])
    third = expect(request, DOCUMENTS)
    assert len(fake_api.requests) == 2 and third.pack_version == "pack-test-2"


def test_without_a_key_the_step_matches_names_offline(
    settings: object, no_key: None, fake_api: FakeMessagesAPI, pack_in_step: dict[str, KnowledgePack]
) -> None:
    request = _request(expected_up=["IRF1"])

    expectations = expect(request, DOCUMENTS)

    assert fake_api.requests == []
    assert "model" not in expectations.set_by and expectations.usage is None
    assert [(g.gene, g.source) for g in expectations.genes] == [("IRF1", "request")]
    assert expectations.claims == []  # document claims need a model: not assessed offline
    assert expectations.pack_version == "pack-test-1"
