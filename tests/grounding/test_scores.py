"""The score card: each component from the figures it names, nothing unassessed filled in, and a
composite that is the weighted mean of the assessed ones, rounded half up."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from clients.grounding_settings import GroundingSettings
from inference.contract import (
    DE_COLUMNS,
    BacktestContext,
    BacktestSummary,
    IdentityMarkers,
    PredictionSummary,
)
from tasks.grounding.models import DocumentClaim, ExpectedGene, ExpectedGeneSet, Expectations, ScoreComponent
from tasks.grounding.pack import GeneSet, KnowledgePack
from tasks.grounding.scores import (
    CAVEAT_DESCRIPTIVE,
    CAVEAT_QUERY_AS_CONTROL,
    CAVEAT_UNTRAINED,
    composite,
    round_half_up,
    score_prediction,
)

WEIGHTS = GroundingSettings().weights
GENES = [f"G{i:03d}" for i in range(300)]


def component(name: str, score: float | None) -> ScoreComponent:
    return ScoreComponent(name=name, score=score, basis="test" if score is not None else "not assessed: test")


def de_table(changes: dict[str, tuple[float, float]], *, split_value: str = "IFNB", reference: str = "synthetic_control",
             mean_treated: dict[str, float] | None = None) -> pd.DataFrame:
    """A DE table over GENES: every gene unchanged (q = 1) but those in ``changes`` (gene -> (lfc, q))."""
    rows = []
    for i, gene in enumerate(GENES):
        lfc, q = changes.get(gene, (0.0, 1.0))
        treated = (mean_treated or {}).get(gene, 1.0 + i / 100)
        rows.append({
            "split_value": split_value, "gene": gene, "mean_treated": treated, "mean_reference": treated - lfc,
            "log_fold_change": lfc, "statistic": 0.0, "p_value": q / 10, "q_value": q,
            "fraction_same_direction": 0.5, "reference": reference, "test": "test",
        })
    return pd.DataFrame(rows)[DE_COLUMNS]


def summary(**update) -> PredictionSummary:
    fields = {"mode": "generate", "model_trained": True, "query_cells": 50, "genes": len(GENES), "control_value": "PBS"}
    return PredictionSummary(**{**fields, **update})


def expectations(**update) -> Expectations:
    return Expectations(**{"set_by": "request", "pack_version": "p1", **update})


def empty_pack() -> KnowledgePack:
    return KnowledgePack(version="p1", sources=[], gene_sets={})


def up(gene: str, source: str = "request") -> ExpectedGene:
    return ExpectedGene(gene=gene, direction="up", source=source)


# --- the composite -------------------------------------------------------------------------------


@pytest.mark.parametrize(("scores", "expected"), [((6.5, 6.5), 7), ((7.49, 7.49), 7), ((5.5, 5.5), 6), ((2.5, 2.5), 3)])
def test_composite_rounds_half_up(scores, expected) -> None:
    components = [component("pathway_coherence", scores[0]), component("target_activation", scores[1])]
    assert composite(components, WEIGHTS) == expected


def test_round_half_up_is_not_bankers_rounding() -> None:
    assert round(0.125, 2) == 0.12 and round_half_up(0.125, 2) == 0.13
    assert round_half_up(6.5, 0) == 7 and round(6.5) == 6


def test_composite_honours_the_weights() -> None:
    components = [component("pathway_coherence", 10.0), component("backtest", 4.0)]
    assert composite(components, {"pathway_coherence": 1.0, "backtest": 2.0}) == 6  # (10 + 8) / 3
    assert composite(components, {"pathway_coherence": 3.0, "backtest": 1.0}) == 9  # (30 + 4) / 4 = 8.5


def test_composite_needs_two_assessed_components() -> None:
    one = [component("pathway_coherence", 8.0), component("target_activation", None), component("backtest", None)]
    assert composite(one, WEIGHTS) is None
    zero_weight = [component("pathway_coherence", 8.0), component("target_activation", 2.0)]
    assert composite(zero_weight, {"pathway_coherence": 1.0, "target_activation": 0.0}) is None


def test_unassessed_components_are_never_filled() -> None:
    """No expectations, markers or backtest: every component says why, none has a number, no composite."""
    evaluation = score_prediction(expectations(), summary(), de_table({}), empty_pack(), GroundingSettings(),
                                  model_trained=True)
    assert [c.name for c in evaluation.components] == [
        "pathway_coherence", "target_activation", "identity_preservation", "document_support", "backtest"
    ]
    for c in evaluation.components:
        assert c.score is None and c.basis.startswith("not assessed: "), c
    assert evaluation.composite is None
    assert evaluation.component("document_support").basis == "not assessed: offline: no model read the documents"


# --- target activation ---------------------------------------------------------------------------


def test_target_activation_weighs_genes_by_effect_and_lists_unknown_genes() -> None:
    de = de_table({"G001": (2.0, 0.001), "G002": (-1.0, 0.001), "G003": (0.02, 0.5)})
    found = expectations(genes=[up("G001"), up("G002"), up("G003"), up("NOPE1"), up("nope2")])
    evaluation = score_prediction(found, summary(), de, empty_pack(), GroundingSettings(), model_trained=True)
    target = evaluation.component("target_activation")
    assert target.score == pytest.approx(round(10 * 2.0 / (2.0 + 1.0 + 0.1), 2))  # G003 weighs the 0.1 floor
    assert target.details["not in the model or input"] == "NOPE1, nope2"
    assert "NOPE1, nope2" in target.basis
    assert target.details["in the DE"] == 3


def test_expected_genes_all_unknown_is_not_assessed_and_says_which() -> None:
    evaluation = score_prediction(expectations(genes=[up("XYZ1")]), summary(), de_table({}), empty_pack(),
                                  GroundingSettings(), model_trained=True)
    target = evaluation.component("target_activation")
    assert target.score is None and "XYZ1" in target.basis


def test_gene_names_match_case_insensitively() -> None:
    de = de_table({"G001": (1.0, 0.001)})
    evaluation = score_prediction(expectations(genes=[up("g001")]), summary(), de, empty_pack(), GroundingSettings(),
                                  model_trained=True)
    assert evaluation.component("target_activation").score == 10


# --- pathway coherence ---------------------------------------------------------------------------


def test_pathway_coherence_counts_sets_for_and_against() -> None:
    raised, lowered = GENES[10:30], GENES[40:60]
    pack = KnowledgePack(version="p1", sources=[], gene_sets={
        "S:raised": GeneSet("S:raised", "raised things", frozenset(raised), "t"),
        "S:lowered": GeneSet("S:lowered", "lowered things", frozenset(lowered), "t"),
        "S:quiet": GeneSet("S:quiet", "quiet things", frozenset(GENES[100:120]), "t"),
        "S:outside": GeneSet("S:outside", "elsewhere", frozenset(f"OTHER{i}" for i in range(20)), "t"),
    })
    de = de_table({**{g: (1.5, 1e-6) for g in raised}, **{g: (-1.5, 1e-6) for g in lowered}})
    sets = [
        ExpectedGeneSet(set_id="S:raised", name="raised things", direction="up", source="request", genes=20),
        ExpectedGeneSet(set_id="S:lowered", name="lowered things", direction="up", source="request", genes=20),
        ExpectedGeneSet(set_id="S:quiet", name="quiet things", direction="down", source="request", genes=20),
        ExpectedGeneSet(set_id="S:outside", name="elsewhere", direction="up", source="request", genes=20),
    ]
    evaluation = score_prediction(expectations(gene_sets=sets), summary(), de, pack, GroundingSettings(),
                                  model_trained=True)
    pathway = evaluation.component("pathway_coherence")
    # one for (raised up), one against (lowered expected up), quiet neither; elsewhere not in the background
    assert pathway.details["IFNB: for"] == 1 and pathway.details["IFNB: against"] == 1
    assert pathway.details["expected sets in the background"] == 3
    assert pathway.score == 0
    assert "elsewhere (S:outside)" in pathway.basis
    assert {r.set_id for r in evaluation.enrichment if r.expected} >= {"S:raised", "S:lowered"}


# --- identity preservation -----------------------------------------------------------------------


def test_identity_keeps_markers_above_the_median_without_a_2_fold_drop() -> None:
    markers = ["G290", "G291", "G292", "G293"]
    de = de_table(
        {"G292": (-0.5, 0.001), "G293": (-1.0, 0.001)},  # -0.5 is less than a 2-fold drop, -1.0 (natural log) more
        mean_treated={"G291": 0.01},  # below the median over tested genes
    )
    identity = IdentityMarkers(cell_type_column="cell_type", cell_type="B cell", genes=[*markers, "NOTTESTED"],
                               cells_of_type=30, cells_other=70, method="scanpy rank_genes_groups (wilcoxon)")
    evaluation = score_prediction(expectations(), summary(identity=identity), de, empty_pack(), GroundingSettings(),
                                  model_trained=True)
    kept = evaluation.component("identity_preservation")
    assert kept.score == 10 * 2 / 4
    assert kept.details["IFNB: lost"] == "G291, G293"
    assert math.isclose(np.log(2), 0.693, abs_tol=1e-3) and "-0.69" in kept.basis


# --- document support ----------------------------------------------------------------------------


def test_document_support_counts_claims_the_de_decides_with_their_pages() -> None:
    de = de_table({"G001": (1.0, 0.001), "G002": (1.0, 0.001), "G003": (0.3, 0.4)})
    claims = [
        DocumentClaim(document="paper.pdf", page=3, quote="G001 rises", gene="G001", direction="up"),
        DocumentClaim(document="paper.pdf", page=4, quote="G002 falls", gene="G002", direction="down"),
        DocumentClaim(document="protocol.pdf", page=1, quote="G003 rises", gene="G003", direction="up"),
        DocumentClaim(document="protocol.pdf", page=2, quote="G001 rises again", gene="G001", direction="up"),
    ]
    found = expectations(claims=claims, set_by="request + model claude-test")
    support = score_prediction(found, summary(), de, empty_pack(), GroundingSettings(), model_trained=True)
    document = support.component("document_support")
    assert document.score == pytest.approx(10 * 2 / 3, abs=0.01)  # G003 undecided: counts neither way
    assert document.details["claim 2 in IFNB"].startswith("paper.pdf p. 4: G002 down")
    assert document.details["claim 2 in IFNB"].endswith("disagrees")
    assert "undecided" in document.details["claim 3 in IFNB"]


def test_document_support_with_a_model_but_no_claims_is_not_assessed() -> None:
    evaluation = score_prediction(expectations(set_by="request + model claude-test"), summary(), de_table({}),
                                  empty_pack(), GroundingSettings(), model_trained=True)
    assert evaluation.component("document_support").score is None
    assert "offline" not in evaluation.component("document_support").basis


# --- backtest ------------------------------------------------------------------------------------


def test_backtest_maps_pearson_delta_and_never_below_zero() -> None:
    backtest = BacktestSummary(cell_type_column="cell_type", cell_type="B cell", held_out_cells=40, tool="cell-eval 0.6",
                               contexts=[
                                   BacktestContext(split_value="IFNB", real_cells=20, predicted_cells=20,
                                                   metrics={"pearson_delta": 0.8, "mse": 0.1}),
                                   BacktestContext(split_value="TNF", real_cells=20, predicted_cells=20,
                                                   metrics={"pearson_delta": -0.4}),
                               ])
    evaluation = score_prediction(expectations(), summary(backtest=backtest), de_table({}), empty_pack(),
                                  GroundingSettings(), model_trained=True)
    scored = evaluation.component("backtest")
    assert scored.score == 4.0  # (8 + 0) / 2
    assert "pearson_delta" in scored.basis and "cell-eval 0.6" in scored.basis


def test_backtest_not_assessed_says_the_jobs_reason() -> None:
    backtest = BacktestSummary(cell_type_column="cell_type", cell_type="B cell",
                               not_assessed="the prompt has no real B cell cells under a treated context")
    evaluation = score_prediction(expectations(), summary(backtest=backtest), de_table({}), empty_pack(),
                                  GroundingSettings(), model_trained=True)
    assert evaluation.component("backtest").score is None
    assert evaluation.component("backtest").basis == (
        "not assessed: the prompt has no real B cell cells under a treated context"
    )


# --- reference and caveats -----------------------------------------------------------------------


def test_query_as_control_and_untrained_model_are_caveats_untrained_first() -> None:
    de = de_table({}, reference="query_input")
    evaluation = score_prediction(expectations(), summary(control_value=None), de, empty_pack(), GroundingSettings(),
                                  model_trained=False)
    assert evaluation.reference == "query input (weaker: unpaired)"
    assert evaluation.caveats[0] == CAVEAT_UNTRAINED
    assert CAVEAT_DESCRIPTIVE in evaluation.caveats and CAVEAT_QUERY_AS_CONTROL in evaluation.caveats
    assert evaluation.formula_version and "rounded half up" in evaluation.formula
    assert evaluation.weights == WEIGHTS and evaluation.pack_version == "p1"


def test_synthetic_control_has_no_query_as_control_caveat() -> None:
    evaluation = score_prediction(expectations(), summary(), de_table({}), empty_pack(), GroundingSettings(),
                                  model_trained=True)
    assert evaluation.reference == "synthetic control: PBS, paired by query cell"
    assert CAVEAT_QUERY_AS_CONTROL not in evaluation.caveats and CAVEAT_UNTRAINED not in evaluation.caveats


# --- the Prefect task ----------------------------------------------------------------------------


def test_evaluate_grounding_reads_the_de_table_and_a_retry_does_not_recompute(prefect_api, settings, tmp_path) -> None:
    from prefect import flow

    from tasks.grounding.steps import evaluate_grounding

    de_uri = (tmp_path / "de.parquet").as_uri()
    de_table({"G001": (1.0, 0.001), "G002": (1.0, 0.001)}).to_parquet(tmp_path / "de.parquet")
    found = expectations(genes=[up("G001"), up("G002")])

    @flow
    def twice():
        first = evaluate_grounding(found, summary(), de_uri, return_state=True)
        again = evaluate_grounding(found, summary(), de_uri, return_state=True)
        return first, again

    first, again = twice()
    assert first.is_completed() and again.name == "Cached"
    assert again.result() == first.result()
    assert first.result().component("target_activation").score == 10
    assert first.result().pack_version.startswith("pack-1")
