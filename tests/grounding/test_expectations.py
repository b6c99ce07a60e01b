"""Expectations as a user sets them: the request's own, checked against the pack before any GPU time,
and offline name matching where the request gives none."""

from __future__ import annotations

import pytest

from clients.settings import get_settings
from tasks.grounding.expectations import (
    ExpectationsInvalid,
    offline_expectations,
    query_type_of,
    request_expectations,
)
from tasks.grounding.pack import GeneSet, KnowledgePack, OntologyTerm
from tasks.request import AnalysisRequest

SETS = [
    GeneSet("GO:0035456", "response to interferon-beta", frozenset({"IFIT1", "ISG15", "MX1", "OAS1"}), "GO BP"),
    GeneSet("GO:0032608", "interferon-beta production", frozenset({"IRF3", "IRF7", "TBK1"}), "GO BP"),
    GeneSet("GO:0006954", "inflammatory response", frozenset({"IL1B", "TNF", "IL6", "CXCL8"}), "GO BP"),
    GeneSet("GO:0006915", "apoptotic process", frozenset({"CASP3", "BAX", "BCL2"}), "GO BP"),
    GeneSet("GO:0030593", "neutrophil chemotaxis", frozenset({"CXCL8", "CXCR2"}), "GO BP"),
    GeneSet("GO:0071346", "cellular response to type II interferon", frozenset({"STAT1", "IRF1"}), "GO BP"),
]
TERMS = [
    OntologyTerm("CL:0000235", "macrophage", synonyms=("histiocyte",)),
    OntologyTerm("CL:0001054", "CD14-positive monocyte", synonyms=("CD14+ monocyte",)),
    OntologyTerm("CL:0000236", "B cell", synonyms=("B lymphocyte",)),
    OntologyTerm("CL:0000000", "cell"),
]


@pytest.fixture
def pack() -> KnowledgePack:
    return KnowledgePack(
        version="test-pack", sources=[], gene_sets={s.set_id: s for s in SETS}, cell_types={t.term_id: t for t in TERMS}
    )


def request(question: str = "What does the treatment do?", **fields) -> AnalysisRequest:
    return AnalysisRequest(question=question, prompt_uri="file:///data/p.h5ad", query_uri="file:///data/q.h5ad", **fields)


# --- the request's own ---------------------------------------------------------------------------


def test_request_expectations_resolve_genes_sets_and_cell_type(pack) -> None:
    found = request_expectations(
        request(
            expected_up=["IFIT1", "MX1"],
            expected_down=["CD19"],
            expected_gene_sets={"GO:0035456": "up", "Inflammatory Response": "down"},
            cell_type_column="cell_type",
            query_cell_type="CD14+ Monocytes",
        ),
        pack,
    )
    assert [(g.gene, g.direction, g.source) for g in found.genes] == [
        ("IFIT1", "up", "request"), ("MX1", "up", "request"), ("CD19", "down", "request")
    ]
    assert [(s.set_id, s.direction, s.genes) for s in found.gene_sets] == [("GO:0035456", "up", 4), ("GO:0006954", "down", 4)]
    assert found.cell_type.ontology_id == "CL:0001054"
    assert found.set_by == "request" and found.pack_version == "test-pack"


def test_unknown_expected_genes_are_a_note_not_a_crash(pack) -> None:
    found = request_expectations(request(expected_up=["IFIT1", "NOTAGENE"]), pack)
    assert [g.gene for g in found.genes] == ["IFIT1", "NOTAGENE"]  # kept: scoring decides against the DE
    assert any("NOTAGENE" in note and "IFIT1" not in note for note in found.notes)


def test_unknown_gene_sets_fail_listing_each_with_suggestions(pack) -> None:
    with pytest.raises(ExpectationsInvalid) as raised:
        request_expectations(
            request(expected_gene_sets={"inflamatory respons": "up", "GO:0035456": "up", "zzz qqq": "down"}), pack
        )
    message = str(raised.value)
    assert "2 gene set(s)" in message
    assert "'inflamatory respons'" in message and "'inflammatory response' (GO:0006954)" in message
    assert "'zzz qqq'" in message
    assert isinstance(raised.value, ValueError)


def test_a_gene_expected_both_ways_is_refused(pack) -> None:
    with pytest.raises(ExpectationsInvalid, match="IFIT1"):
        request_expectations(request(expected_up=["IFIT1"], expected_down=["ifit1"]), pack)


def test_a_cell_type_that_resolves_to_nothing_is_a_note(pack) -> None:
    found = request_expectations(request(cell_type_column="cell_type", query_cell_type="Zorblax cells"), pack)
    assert found.cell_type is None
    assert found.notes == [
        "query_cell_type 'Zorblax cells' matches no Cell Ontology term; identity is scored from the data's own markers"
    ]


# --- offline name matching -----------------------------------------------------------------------


def test_offline_picks_sets_whose_names_share_the_questions_words(pack) -> None:
    found = offline_expectations(request("How do macrophages respond to interferon-beta?"), pack)
    ids = [s.set_id for s in found.gene_sets]
    assert set(ids) == {"GO:0035456", "GO:0032608", "GO:0071346"}  # the sets naming interferon (or beta)
    assert all(s.source == "offline" and s.direction == "up" and "interferon" in s.why for s in found.gene_sets)
    assert found.set_by == "request + offline name matching"
    assert found.cell_type.ontology_id == "CL:0000235"  # "macrophages", the exact label in plural


def test_offline_takes_at_most_the_settings_number_of_sets(pack, settings, monkeypatch) -> None:
    question = request("How do macrophages respond to interferon-beta?")
    best_first = [s.set_id for s in offline_expectations(question, pack).gene_sets]
    monkeypatch.setenv("STACKFLOWS_GROUNDING__OFFLINE_GENE_SETS", "1")
    get_settings.cache_clear()
    assert [s.set_id for s in offline_expectations(question, pack).gene_sets] == best_first[:1]
    monkeypatch.setenv("STACKFLOWS_GROUNDING__OFFLINE_GENE_SETS", "0")
    get_settings.cache_clear()
    assert offline_expectations(question, pack).gene_sets == []


def test_offline_direction_is_down_for_what_the_question_says_is_suppressed(pack) -> None:
    found = offline_expectations(request("Does dexamethasone suppress the inflammatory response?"), pack)
    assert [(s.set_id, s.direction) for s in found.gene_sets] == [("GO:0006954", "down")]


def test_offline_matching_does_not_override_the_requests_sets(pack) -> None:
    found = offline_expectations(
        request("How do macrophages respond to interferon-beta?", expected_gene_sets={"apoptotic process": "down"}), pack
    )
    assert [(s.set_id, s.source) for s in found.gene_sets] == [("GO:0006915", "request")]


def test_offline_finds_no_sets_for_a_question_without_topic_words(pack) -> None:
    found = offline_expectations(request("What would these cells look like?"), pack)
    assert found.gene_sets == [] and found.set_by == "request"


@pytest.mark.parametrize(
    ("fields", "query_values", "term"),
    [
        ({"cell_type_column": "cell_type", "query_cell_type": "B lymphocyte"}, (), "CL:0000236"),  # synonym
        ({}, ("CD14+ Monocyte",), "CL:0001054"),  # a value of the query filter
        ({"query_obs_filter": {"cell_type": ["histiocyte"]}}, (), "CL:0000235"),  # the request's one-value filter
    ],
)
def test_offline_cell_type_by_label_or_synonym(pack, fields, query_values, term) -> None:
    found = offline_expectations(request("What happens here?", **fields), pack, query_values=query_values)
    assert found.cell_type.ontology_id == term


def test_offline_cell_type_never_a_loose_or_generic_match(pack) -> None:
    found = offline_expectations(request("Which inflammatory cells respond?"), pack)
    assert found.cell_type is None  # neither "cells" (CL:0000000) nor a guess


# --- the query's cell type -----------------------------------------------------------------------


def test_query_type_of() -> None:
    assert query_type_of(request(cell_type_column="ct", query_cell_type="B cell")) == ("ct", "B cell")
    assert query_type_of(request(query_obs_filter={"ct": ["B cell"]})) == ("ct", "B cell")
    assert query_type_of(request(cell_type_column="ct", query_obs_filter={"ct": ["NK"], "donor": ["d1", "d2"]})) == (
        "ct", "NK"
    )
    assert query_type_of(request(query_obs_filter={"ct": ["B cell", "NK"]})) is None
    assert query_type_of(request(query_obs_filter={"ct": ["B cell"], "donor": ["d1"]})) is None
    assert query_type_of(request()) is None
