"""A grounded report built by hand: expectations, a score card, enrichment and a small DE table,
with hostile text wherever the data, a user or a model could have written it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from inference.contract import DE_COLUMNS
from tasks.agent.plan import Findings, RunPlan
from tasks.grounding.models import (
    CellTypeTerm,
    DocumentClaim,
    EnrichmentRow,
    ExpectedGene,
    ExpectedGeneSet,
    Expectations,
    GroundingEvaluation,
    ScoreComponent,
)
from tasks.report import AnalysisReport, JobFigures, TopGene

HOSTILE_SET = "interferon | <script>alert(1)</script> # Forged set"
HOSTILE_GENE = "<b>IFI6</b>_1|x"
HOSTILE_CLAIM = "IFI6 rises\n# Model: TRAINED\n<img src=x onerror=alert(2)> | cell"
HOSTILE_NOTE = "unknown gene `NOPE` [click](javascript:alert(3))"
HOSTILE_LABEL = "classical monocyte <i>x</i>"
CONTEXTS = ["IFN-beta", "LPS ## two"]
WEIGHTS = {
    "pathway_coherence": 0.3, "target_activation": 0.3, "identity_preservation": 0.2,
    "document_support": 0.1, "backtest": 0.1,
}  # fmt: skip
UNTRAINED = "The model is untrained: these scores show that the pipeline works."
DESCRIPTIVE = "P-values over generated cells are descriptive: they shrink as cells are added."


def expectations() -> Expectations:
    return Expectations(
        genes=[
            ExpectedGene(gene=HOSTILE_GENE, direction="up", source="request"),
            ExpectedGene(gene="G1", direction="down", source="model", why="repressed by IFN"),
        ],
        gene_sets=[
            ExpectedGeneSet(set_id="GO:0034340", name=HOSTILE_SET, direction="up", source="offline", genes=12),
        ],
        cell_type=CellTypeTerm(
            ontology_id="CL:0000860", label=HOSTILE_LABEL, matched="CD14+ Mono", matched_by="synonym"
        ),
        claims=[DocumentClaim(document="protocol.pdf", page=3, quote=HOSTILE_CLAIM, gene=HOSTILE_GENE, direction="up")],
        notes=[HOSTILE_NOTE],
        set_by="request + offline name matching",
        pack_version="pack-2026.1",
    )


def evaluation(composite: int | None = 8, caveats: list[str] | None = None, reference: str = "query_input") -> GroundingEvaluation:
    return GroundingEvaluation(
        components=[
            ScoreComponent(name="pathway_coherence", score=7.5, basis=f"1 of 1 expected sets enriched: {HOSTILE_SET}"),
            ScoreComponent(name="target_activation", score=8.25, basis="2 expected genes, weighted by |LFC|"),
            ScoreComponent(name="identity_preservation", score=None, basis="no cell type column given"),
            ScoreComponent(name="document_support", score=None, basis="offline: no model read the documents"),
            # backtest: absent from the evaluation altogether
        ],
        composite=composite,
        weights=WEIGHTS,
        pack_version="pack-2026.1",
        reference=reference,
        enrichment=[
            EnrichmentRow(
                split_value=CONTEXTS[0], direction="up", set_id="GO:0034340", name=HOSTILE_SET, set_size=12,
                overlap=5, de_genes=20, background=200, p_value=1e-5, q_value=2e-4, expected="up",
            ),
            EnrichmentRow(
                split_value=CONTEXTS[1], direction="down", set_id="GO:0006954", name="inflammatory response",
                set_size=30, overlap=2, de_genes=20, background=200, p_value=0.2, q_value=0.6,
            ),
        ],  # fmt: skip
        caveats=caveats if caveats is not None else [UNTRAINED, DESCRIPTIVE, UNTRAINED],
    )


def top_genes() -> list[TopGene]:
    figures = {"mean_treated": 2.5, "mean_reference": 1.0, "p_value": 1e-4, "q_value": 3e-3, "fraction_same_direction": 0.9}
    return [
        TopGene(split_value=context, direction=direction, gene=gene, log_fold_change=lfc, reference="query_input",
                test="wilcoxon rank-sum, unpaired", **figures)  # fmt: skip
        for context in CONTEXTS
        for direction, gene, lfc in (("up", HOSTILE_GENE, 1.5), ("down", "G1", -1.25))
    ]


def report(grounded: bool = True, outputs: dict[str, str] | None = None) -> AnalysisReport:
    return AnalysisReport(
        flow_run_id="0",
        question="Does IFN-beta raise interferon genes in monocytes?",
        plan=RunPlan(split_column="condition", split_values=CONTEXTS, num_steps=2, rationale="r", planned_by="offline planner"),
        job=JobFigures(
            job_id="stack-abc-a1", device="cpu", precision="fp32", model_trained=False, model_parameters=10,
            predictions_shape=(6, 8), num_steps=2, wall_seconds=1.0, gpu_seconds=0.0, peak_memory_mb=1.0,
        ),  # fmt: skip
        findings=Findings(markdown="IFI6 goes up.", caveats=[UNTRAINED], written_by="offline summary", model_trained=False),
        top_genes=top_genes(),
        expectations=expectations() if grounded else None,
        grounding=evaluation() if grounded else None,
        outputs=outputs or {},
    )


def write_de_table(path: Path, genes: list[str]) -> str:
    """A de.parquet with every DE column: per context, the first gene raised, the second lowered, the rest null."""
    rng = np.random.default_rng(0)
    rows = []
    for context in CONTEXTS:
        for index, gene in enumerate(genes):
            lfc = {0: 1.5, 1: -1.25}.get(index, float(rng.normal(0, 0.05)))
            q = 1e-6 if index < 2 else float(rng.uniform(0.2, 1.0))
            rows.append([context, gene, 2.0 + lfc, 2.0, lfc, lfc * 10, q / 10, q, 0.9, "query_input", "wilcoxon rank-sum"])
    pd.DataFrame(rows, columns=DE_COLUMNS).to_parquet(path)
    return path.as_uri()
