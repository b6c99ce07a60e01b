"""The tools the expectations model may call: search the knowledge pack and the request's documents.

Every answer comes from the pack or from the OCR'd pages, so what the model submits can be checked
against the same sources (:mod:`tasks.agent.expectation_checks`). A bad call answers with an error
result that says what would work, so the model can correct itself.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from clients.ocr.models import DocumentText, document_name
from tasks.agent.plan import _strip_titles
from tasks.grounding.pack import KnowledgePack

SUBMIT_EXPECTATIONS = "submit_expectations"
SNIPPET_CHARS = 240  # text shown each side of a match
MAX_RESULTS = 25
MAX_PAGE_CHARS = 12_000  # read_page answers at most this much of one page


class ClaimProposal(BaseModel):
    model_config = ConfigDict(extra="forbid")

    document: str = Field(description="The document's file name, as search_documents names it.")
    page: int = Field(ge=1, description="The page number the quote is on.")
    quote: str = Field(min_length=1, max_length=500, description="The exact words on that page that make the claim.")
    gene: str | None = Field(default=None, description="The gene symbol the claim is about, if it is about a gene.")
    set_id: str | None = Field(default=None, description="The gene set id (from search_gene_sets), if about a set.")
    direction: Literal["up", "down"] = Field(description="Which way the document says it moves in the treated context.")


class ExpectationsProposal(BaseModel):
    """What the model submits: the submit_expectations tool's input."""

    model_config = ConfigDict(extra="forbid")

    genes_up: list[str] = Field(default_factory=list, max_length=50, description="Gene symbols expected to go up.")
    genes_down: list[str] = Field(default_factory=list, max_length=50, description="Gene symbols expected to go down.")
    gene_sets: dict[str, Literal["up", "down"]] = Field(
        default_factory=dict, description="Gene set ids from search_gene_sets, each with its expected direction."
    )
    cell_type_id: str | None = Field(
        default=None, description="The query cells' Cell Ontology id (CL:...) from find_cell_type; null if unsure."
    )
    claims: list[ClaimProposal] = Field(
        default_factory=list, max_length=50, description="Claims from the documents, each quoted from its page."
    )
    rationale: str = Field(default="", max_length=2000, description="Why, in a few sentences.")

    @classmethod
    def tool_input_schema(cls) -> dict[str, Any]:
        schema = cls.model_json_schema()
        _strip_titles(schema)
        return schema


_TEXT = {"type": "string", "minLength": 1, "maxLength": 400}
_LIMIT = {"type": "integer", "minimum": 1, "maximum": MAX_RESULTS, "default": 10}

TOOLS: list[dict[str, Any]] = [
    {
        "name": "search_gene_sets",
        "description": (
            "Search the knowledge pack's gene sets (GO Biological Process, and any GMT the user gave) by words of "
            "their names, e.g. 'interferon gamma response'. Answers ids, names and sizes."
        ),
        "input_schema": {
            "type": "object",
            "properties": {"text": _TEXT, "limit": _LIMIT},
            "required": ["text"],
            "additionalProperties": False,
        },
    },
    {
        "name": "find_cell_type",
        "description": (
            "Find a Cell Ontology term by id, label or synonym (e.g. 'CD14+ monocyte'): the term it resolves to, "
            "if any, and close candidates."
        ),
        "input_schema": {
            "type": "object",
            "properties": {"text": _TEXT},
            "required": ["text"],
            "additionalProperties": False,
        },
    },
    {
        "name": "search_documents",
        "description": (
            "Search the request's documents (their OCR'd text) for words: answers the pages that contain them, "
            "with the document name, page number and snippets of the exact text."
        ),
        "input_schema": {
            "type": "object",
            "properties": {"text": _TEXT, "limit": _LIMIT},
            "required": ["text"],
            "additionalProperties": False,
        },
    },
    {
        "name": "read_page",
        "description": "Read one page of one document in full (to quote it exactly).",
        "input_schema": {
            "type": "object",
            "properties": {"document": {"type": "string"}, "page": {"type": "integer", "minimum": 1}},
            "required": ["document", "page"],
            "additionalProperties": False,
        },
    },
    {
        "name": SUBMIT_EXPECTATIONS,
        "description": (
            "Submit the expectations once: genes and gene sets expected up or down in the treated contexts, the "
            "query cell type's ontology id, and claims quoted from the documents with their page numbers. Code "
            "checks it: unknown ids and quotes not on the cited page are dropped."
        ),
        "input_schema": ExpectationsProposal.tool_input_schema(),
    },
]


@dataclass(frozen=True)
class Page:
    document: str  # the file name, as the model sees it
    uri: str
    number: int
    text: str


def pages_of(documents: list[DocumentText]) -> list[Page]:
    return [
        Page(document=document_name(d.uri), uri=d.uri, number=p.page_number, text=p.text)
        for d in documents
        for p in d.pages
    ]


def find_page(pages: list[Page], document: str, number: int) -> Page | None:
    """The page a claim cites: by file name or by the document's URI."""
    return next((p for p in pages if document in (p.document, p.uri) and p.number == number), None)


class ExpectationTools:
    """Answers the search tools from one pack and one set of documents."""

    def __init__(self, pack: KnowledgePack, documents: list[DocumentText]) -> None:
        self.pack = pack
        self.pages = pages_of(documents)

    def run(self, name: str, arguments: dict[str, Any]) -> tuple[str, bool]:
        """Answer one tool call: (JSON text, is_error)."""
        try:
            if name == "search_gene_sets":
                return _json(self.search_gene_sets(**arguments)), False
            if name == "find_cell_type":
                return _json(self.find_cell_type(**arguments)), False
            if name == "search_documents":
                return _json(self.search_documents(**arguments)), False
            if name == "read_page":
                return self.read_page(**arguments)
            names = ", ".join(t["name"] for t in TOOLS)
            return f"Unknown tool {name!r}; the tools are {names}.", True
        except (TypeError, ValueError) as bad:
            return f"Bad arguments for {name}: {bad}", True

    def search_gene_sets(self, text: str, limit: int = 10) -> dict[str, Any]:
        found = self.pack.search_gene_sets(text, limit=min(int(limit), MAX_RESULTS))
        return {
            "query": text,
            "gene_sets": [
                {"set_id": s.set_id, "name": s.name, "collection": s.collection, "genes": len(s.genes)} for s in found
            ],
        }

    def find_cell_type(self, text: str) -> dict[str, Any]:
        term = self.pack.resolve_cell_type(text)
        candidates = self.pack.search_cell_types(text, limit=5)
        return {
            "query": text,
            "resolved": None if term is None else {
                "id": term.ontology_id, "label": term.label, "matched_by": term.matched_by,
            },
            "candidates": [
                {"id": t.term_id, "label": t.label, "synonyms": list(t.synonyms[:5])} for t in candidates
            ],
        }

    def search_documents(self, text: str, limit: int = 10) -> dict[str, Any]:
        if not self.pages:
            return {"query": text, "pages": [], "note": "the request has no documents"}
        words = _search_words(text)
        phrase = " ".join(text.lower().split())
        hits = []
        for page in self.pages:
            lowered = page.text.lower()
            found = [w for w in words if w in lowered]
            has_phrase = bool(phrase) and phrase in " ".join(lowered.split())
            if not found and not has_phrase:
                continue
            hits.append(((has_phrase, len(found)), page, found))
        hits.sort(key=lambda h: (-h[0][0], -h[0][1], h[1].document, h[1].number))
        return {
            "query": text,
            "pages": [
                {"document": page.document, "page": page.number, "matched": found, "snippets": _snippets(page.text, found or [phrase])}
                for _, page, found in hits[: min(int(limit), MAX_RESULTS)]
            ],
        }

    def read_page(self, document: str, page: int) -> tuple[str, bool]:
        found = find_page(self.pages, document, int(page))
        if found is None:
            listed = sorted({(p.document, max(q.number for q in self.pages if q.document == p.document)) for p in self.pages})
            known = ", ".join(f"{name} (pages 1-{last})" for name, last in listed) or "none"
            return f"No page {page} of {document!r}; the documents are: {known}.", True
        return _json({"document": found.document, "page": found.number, "text": found.text[:MAX_PAGE_CHARS]}), False


def _search_words(text: str) -> list[str]:
    words = []
    for word in re.findall(r"[a-z0-9][a-z0-9+\-]*", text.lower()):
        if len(word) >= 3 or any(ch.isdigit() for ch in word):
            if word not in words:
                words.append(word)
    return words


def _snippets(text: str, needles: list[str], most: int = 2) -> list[str]:
    """Up to ``most`` windows of the page's own text around the first matches (so quotes can be exact)."""
    lowered = text.lower()
    windows: list[tuple[int, int]] = []
    for needle in needles:
        at = lowered.find(needle)
        if at < 0:
            continue
        start, end = max(0, at - SNIPPET_CHARS), min(len(text), at + len(needle) + SNIPPET_CHARS)
        if any(start < e and s < end for s, e in windows):
            continue
        windows.append((start, end))
        if len(windows) == most:
            break
    return [("..." if s else "") + text[s:e] + ("..." if e < len(text) else "") for s, e in sorted(windows)]


def _json(value: Any) -> str:
    return json.dumps(value, default=str)
