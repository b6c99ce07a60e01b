"""Small grounding objects the agent tests share: a synthetic-control summary and its score card."""

from __future__ import annotations

from inference.contract import PredictionSummary, SplitSummary
from tasks.agent.plan import RunPlan
from tasks.grounding.models import EnrichmentRow, GroundingEvaluation, ScoreComponent
from tests.agent.conftest import change

PLAN = RunPlan(
    split_column="condition",
    split_values=["IFNG", "TNF"],
    control_value="PBS",
    num_steps=10,
    rationale="PBS is the baseline; IFNG and TNF are the treated contexts.",
    planned_by="offline planner (no ANTHROPIC_API_KEY)",
)
SUMMARY = PredictionSummary(
    mode="generate", model_trained=True, query_cells=200, genes=900, control_value="PBS",
    splits=[
        SplitSummary(
            split_value="IFNG", cells=200, reference="synthetic_control", reference_value="PBS",
            test="wilcoxon signed-rank, paired by query_cell", genes_tested=850, significant_up=31,
            significant_down=12, mean_shift=0.21,
            top_up=[change("CXCL10", 2.4, q=1e-9, fraction=0.97), change("STAT1", 1.3, q=2e-7)],
            top_down=[change("MYC", -0.7, q=4e-3, fraction=0.71)],
        ),
        SplitSummary(
            split_value="TNF", cells=200, reference="query_input", test="welch t-test, unpaired", genes_tested=850,
            significant_up=3, significant_down=0, mean_shift=0.05,
            top_up=[change("NFKBIA", 0.9, q=0.01)], top_down=[],
        ),
    ],
)
EVALUATION = GroundingEvaluation(
    components=[
        ScoreComponent(name="pathway_coherence", score=7.5, basis="GO:0034341 up in IFNG (q 2e-5), as expected",
                       details={"sets_expected": 1}),
        ScoreComponent(name="target_activation", score=8.25, basis="2 of 2 expected genes up (CXCL10, STAT1)"),
        ScoreComponent(name="identity_preservation", score=6.0, basis="14 of 20 CD14+ markers kept"),
        ScoreComponent(name="document_support", score=None, basis="not assessed: no claims (offline)"),
        ScoreComponent(name="backtest", score=None, basis="not assessed: no real treated cells of the query type"),
    ],
    composite=7,
    weights={"pathway_coherence": 1.0, "target_activation": 1.0, "identity_preservation": 1.0},
    pack_version="pack-1 (test)",
    reference="synthetic control PBS",
    enrichment=[
        EnrichmentRow(split_value="IFNG", direction="up", set_id="GO:0034341", name="response to type II interferon",
                      set_size=40, overlap=9, de_genes=31, background=850, odds_ratio=12.0, p_value=1e-6,
                      q_value=2e-5, expected="up", genes=["CXCL10", "STAT1"]),
        EnrichmentRow(split_value="TNF", direction="up", set_id="GO:0033209",
                      name="tumor necrosis factor-mediated signaling pathway", set_size=30, overlap=1, de_genes=3,
                      background=850, p_value=0.2, q_value=0.6),
    ],
    caveats=["Identity markers come from 40 cells of the query type."],
)
