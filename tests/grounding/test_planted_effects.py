"""Planted effects: predictions made in the test with a known gene set raised (or lowered) in the treated
arm, paired with a synthetic control by query cell. DE must find the planted genes, enrichment must rank
the planted set first, and the scores must say so; the same data with no effect must score low."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from clients.grounding_settings import GroundingSettings
from inference.contract import DE_Q_THRESHOLD, PredictionSummary, SplitSummary
from inference.de import paired_de
from tasks.grounding.enrichment import enrichment, is_enriched
from tasks.grounding.models import ExpectedGene, ExpectedGeneSet, Expectations
from tasks.grounding.pack import GeneSet, KnowledgePack
from tasks.grounding.scores import score_prediction

CELLS, GENES, SET_SIZE = 200, 2000, 40
GENE_NAMES = [f"GENE{i:04d}" for i in range(GENES)]
PLANTED = GENE_NAMES[100 : 100 + SET_SIZE]


def make_pack(seed: int = 7) -> KnowledgePack:
    """The planted set (plus genes the model never saw) and 60 random sets of the other genes."""
    rng = np.random.default_rng(seed)
    others = [g for g in GENE_NAMES if g not in PLANTED]
    sets = [GeneSet("TEST:planted", "planted response", frozenset([*PLANTED, "UNSEEN1", "UNSEEN2"]), "test")]
    for i in range(60):
        genes = rng.choice(others, size=int(rng.integers(15, 60)), replace=False)
        sets.append(GeneSet(f"TEST:random{i:02d}", f"random process {i}", frozenset(genes), "test"))
    return KnowledgePack(version="test-pack-1", sources=[], gene_sets={s.set_id: s for s in sets})


def predictions(fold: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Raw counts of a treated and a control arm: the same query cells (own expression profile each),
    the treated arm with the planted genes scaled by ``fold``, its rows shuffled (pairing is by id)."""
    rng = np.random.default_rng(seed)
    base = rng.gamma(shape=1.5, scale=1.5, size=GENES) + 0.2  # per-gene mean counts
    profile = base * rng.gamma(shape=4.0, scale=0.25, size=(CELLS, GENES))  # each query cell's own rates
    scale = np.ones(GENES)
    scale[100 : 100 + SET_SIZE] = fold
    control = rng.poisson(profile)
    treated = rng.poisson(profile * scale)
    cells = [f"cell{i:03d}" for i in range(CELLS)]
    order = rng.permutation(CELLS)
    return treated[order], control, [cells[i] for i in order], cells


def run_de(fold: float) -> pd.DataFrame:
    treated, control, treated_ids, control_ids = predictions(fold)
    return paired_de(
        treated,
        control,
        GENE_NAMES,
        split_value="IFNB",
        reference_value="PBS",
        query_cells_treated=treated_ids,
        query_cells_control=control_ids,
    )


def summary_of(de: pd.DataFrame) -> PredictionSummary:
    split = SplitSummary(
        split_value="IFNB",
        cells=CELLS,
        reference="synthetic_control",
        reference_value="PBS",
        test=str(de["test"].iloc[0]),
        genes_tested=len(de),
        mean_shift=float(de["log_fold_change"].abs().mean()),
        top_up=[],
        top_down=[],
    )
    return PredictionSummary(
        mode="generate", model_trained=True, query_cells=CELLS, genes=GENES, control_value="PBS", splits=[split]
    )


def expectations(direction: str = "up") -> Expectations:
    genes = [ExpectedGene(gene=g, direction=direction, source="request") for g in PLANTED[:8]]
    genes.append(ExpectedGene(gene="NOTINMODEL", direction=direction, source="request"))
    gene_set = ExpectedGeneSet(
        set_id="TEST:planted", name="planted response", direction=direction, source="request", genes=SET_SIZE + 2
    )
    return Expectations(genes=genes, gene_sets=[gene_set], set_by="request", pack_version="test-pack-1")


@pytest.fixture(scope="module")
def pack() -> KnowledgePack:
    return make_pack()


@pytest.fixture(scope="module")
def raised() -> pd.DataFrame:
    return run_de(fold=3.0)


@pytest.fixture(scope="module")
def null() -> pd.DataFrame:
    return run_de(fold=1.0)


@pytest.fixture(scope="module")
def lowered() -> pd.DataFrame:
    return run_de(fold=1 / 3)


def test_de_finds_the_planted_genes_with_the_right_sign(raised: pd.DataFrame) -> None:
    planted = raised[raised["gene"].isin(PLANTED)]
    assert (planted["q_value"] < DE_Q_THRESHOLD).all()
    assert (planted["log_fold_change"] > 0).all()
    others = raised[~raised["gene"].isin(PLANTED)]
    assert (others["q_value"] < DE_Q_THRESHOLD).mean() < 0.05  # the rest are mostly not called


def test_enrichment_ranks_the_planted_set_first_among_up_genes(raised: pd.DataFrame, pack: KnowledgePack) -> None:
    rows = enrichment(raised, pack, GroundingSettings())
    up = [r for r in rows if r.direction == "up"]
    assert up[0].set_id == "TEST:planted"
    assert is_enriched(up[0])
    assert up[0].set_size == SET_SIZE  # cut to the background: the genes the model never saw do not count
    assert up[0].overlap == SET_SIZE and set(up[0].genes) <= set(PLANTED)
    assert not any(is_enriched(r) for r in up[1:])


def test_planted_effect_scores_high(raised: pd.DataFrame, pack: KnowledgePack) -> None:
    evaluation = score_prediction(
        expectations(), summary_of(raised), raised, pack, GroundingSettings(), model_trained=True
    )
    target = evaluation.component("target_activation")
    assert target.score >= 9
    assert "NOTINMODEL" in target.details["not in the model or input"] and "NOTINMODEL" in target.basis
    assert evaluation.component("pathway_coherence").score == 10
    assert evaluation.reference == "synthetic control: PBS, paired by query cell"


def test_no_effect_scores_low_and_no_set_passes_fdr(null: pd.DataFrame, pack: KnowledgePack) -> None:
    assert (null["q_value"] < DE_Q_THRESHOLD).sum() <= 5
    rows = enrichment(null, pack, GroundingSettings())
    assert not any(r.q_value < DE_Q_THRESHOLD for r in rows)
    evaluation = score_prediction(expectations(), summary_of(null), null, pack, GroundingSettings(), model_trained=True)
    assert evaluation.component("target_activation").score <= 1
    assert evaluation.component("pathway_coherence").score == 0


def test_a_lowered_set_is_found_as_down_not_up(lowered: pd.DataFrame, pack: KnowledgePack) -> None:
    planted = lowered[lowered["gene"].isin(PLANTED)]
    assert ((planted["q_value"] < DE_Q_THRESHOLD) & (planted["log_fold_change"] < 0)).all()
    rows = [r for r in enrichment(lowered, pack, GroundingSettings()) if r.set_id == "TEST:planted"]
    assert [r.direction for r in rows if is_enriched(r)] == ["down"]
    down = [r for r in enrichment(lowered, pack, GroundingSettings()) if r.direction == "down"]
    assert down[0].set_id == "TEST:planted"

    expected_up = score_prediction(
        expectations("up"), summary_of(lowered), lowered, pack, GroundingSettings(), model_trained=True
    )
    expected_down = score_prediction(
        expectations("down"), summary_of(lowered), lowered, pack, GroundingSettings(), model_trained=True
    )
    assert expected_up.component("pathway_coherence").score == 0
    assert expected_up.component("pathway_coherence").details["IFNB: against"] == 1
    assert expected_up.component("target_activation").score == 0
    assert expected_down.component("pathway_coherence").score == 10
    assert expected_down.component("target_activation").score >= 9
