"""The facts an interpretation rests on, in one shape for Claude (as JSON) and the offline summary
(as tables): the score card, each context's DE in brief, the top enriched gene sets.

Both writers read the same numbers, so a model's findings and the offline ones can only differ in
their words. Every number here was computed by code (the job's DE, the grounding's scores).
"""

from __future__ import annotations

from typing import Any

from inference.contract import GeneChange, PredictionSummary, SplitSummary
from tasks.grounding.models import EnrichmentRow, GroundingEvaluation

TOP_GENES = 5  # per direction and context
TOP_SETS = 8


def score_card(evaluation: GroundingEvaluation) -> dict[str, Any]:
    return {
        "components": [
            {"name": c.name, "score": c.score, "basis": c.basis, "details": c.details} for c in evaluation.components
        ],
        "composite": evaluation.composite,
        "weights": evaluation.weights,
        "formula_version": evaluation.formula_version,
        "pack_version": evaluation.pack_version,
        "reference": evaluation.reference,
    }


def reference_of(split: SplitSummary) -> str:
    """The reference in words: the synthetic control (paired) or the query input (unpaired)."""
    if split.reference == "synthetic_control":
        return f"control {split.reference_value} (synthetic, paired by query cell)" if split.reference_value else (
            "synthetic control (paired by query cell)"
        )
    return "query input (unpaired)"


def gene_facts(change: GeneChange) -> dict[str, Any]:
    return {
        "gene": change.gene,
        "lfc": round(change.log_fold_change, 3),
        "q": float(f"{change.q_value:.3g}"),
        "fraction_same_direction": round(change.fraction_same_direction, 3),
    }


def de_facts(summary: PredictionSummary, top: int = TOP_GENES) -> list[dict[str, Any]]:
    return [
        {
            "context": s.split_value,
            "cells": s.cells,
            "reference": reference_of(s),
            "test": s.test,
            "genes_tested": s.genes_tested,
            "significant_up": s.significant_up,
            "significant_down": s.significant_down,
            "mean_abs_lfc": round(s.mean_shift, 4),
            "top_up": [gene_facts(g) for g in s.top_up[:top]],
            "top_down": [gene_facts(g) for g in s.top_down[:top]],
        }
        for s in summary.splits
    ]


def top_enrichment(evaluation: GroundingEvaluation | None, top: int = TOP_SETS) -> list[EnrichmentRow]:
    """The most significant gene sets (lowest q, then largest overlap), across contexts and directions."""
    if evaluation is None:
        return []
    return sorted(evaluation.enrichment, key=lambda r: (r.q_value, -r.overlap, r.split_value, r.set_id))[:top]


def enrichment_facts(row: EnrichmentRow) -> dict[str, Any]:
    return {
        "context": row.split_value,
        "direction": row.direction,
        "set_id": row.set_id,
        "name": row.name,
        "overlap": f"{row.overlap}/{row.set_size}",
        "q": float(f"{row.q_value:.3g}"),
        "expected": row.expected,
        "genes": row.genes[:10],
    }
