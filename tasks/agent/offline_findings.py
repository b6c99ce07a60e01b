"""Findings written from the prediction summary and score card alone, and the caveats every
interpretation carries.

The offline summary states the same facts Claude reads (:mod:`tasks.agent.findings_facts`): the
score card, per context its reference, significant genes and top genes, the top enriched sets.
The caveats are facts the flow knows for certain (an untrained checkpoint, thin contexts, the
weaker reference, descriptive p-values), so they are added by code, not left to a model to remember.
"""

from __future__ import annotations

from inference.contract import GeneChange, PredictionSummary, SplitSummary
from tasks.agent.findings_facts import top_enrichment
from tasks.agent.plan import Findings, RunPlan
from tasks.grounding import caveats as certain
from tasks.grounding.models import GroundingEvaluation, ScoreComponent
from tasks.report_text import md_inline

OFFLINE_WRITER = "offline summary (no model read the results)"
UNTRAINED_CAVEAT = certain.UNTRAINED
DESCRIPTIVE_P_CAVEAT = certain.DESCRIPTIVE_P
QUERY_AS_CONTROL_CAVEAT = certain.QUERY_AS_CONTROL
TOP_GENES_SHOWN = 3  # per direction in the offline table
TOP_SETS_SHOWN = 5
BASIS_CHARS = 160


def summary_caveats(
    plan: RunPlan, summary: PredictionSummary, evaluation: GroundingEvaluation | None = None
) -> list[str]:
    """What a reader must know before trusting the findings."""
    caveats = []
    if not summary.model_trained:
        caveats.append(UNTRAINED_CAVEAT)
    if summary.mode != "generate":
        caveats.append(f"The job ran in {summary.mode!r} mode: there are no generated contexts to compare.")
    planned = set(plan.split_values) - {plan.control_value}
    produced = {s.split_value for s in summary.splits}
    if missing := sorted(planned - produced):
        caveats.append(f"The plan asked for contexts the job did not produce: {', '.join(missing)}.")
    if summary.query_cells < 20:
        caveats.append(f"Only {summary.query_cells} query cells were generated; shifts are noisy.")
    if any(s.reference == "query_input" for s in summary.splits):
        caveats.append(QUERY_AS_CONTROL_CAVEAT)
    if summary.splits:
        caveats.append(DESCRIPTIVE_P_CAVEAT)
    caveats.append("These are model predictions, not measurements.")
    return caveats


def offline_findings(
    plan: RunPlan, summary: PredictionSummary, evaluation: GroundingEvaluation | None = None
) -> Findings:
    """Deterministic markdown from the summary and score card, saying plainly that no model wrote it.

    The markdown has no heading and no caveats section: the report adds both (caveats from the list).
    """
    caveats = summary_caveats(plan, summary, evaluation)
    lines = [
        "_Written from the prediction summary and score card by code: no language model read these results "
        "(set ANTHROPIC_API_KEY for an interpretation)._",
        "",
    ]
    if not summary.model_trained:
        lines += [f"> **Untrained model.** {UNTRAINED_CAVEAT}", ""]
    control = f", each against the control {md_inline(summary.control_value)}" if summary.control_value else ""
    lines += [
        f"{summary.query_cells} query cells over {summary.genes} genes were generated under "
        f"{len(summary.splits)} treated contexts of {md_inline(plan.split_column)}{control}.",
        "",
    ]
    lines += _score_card_lines(evaluation)
    lines += _de_lines(summary)
    lines += _enrichment_lines(evaluation)
    ranked = sorted(summary.splits, key=lambda s: s.mean_shift, reverse=True)
    if len(ranked) > 1:
        lines += [
            f"The context that moves the query cells most is **{md_inline(ranked[0].split_value)}** "
            f"(mean |LFC| {ranked[0].mean_shift:.3f}); the least is **{md_inline(ranked[-1].split_value)}** "
            f"({ranked[-1].mean_shift:.3f}).",
            "",
        ]
    return Findings(
        markdown="\n".join(lines) + "\n",
        caveats=caveats,
        written_by=OFFLINE_WRITER,
        model_trained=summary.model_trained,
    )


def _score_card_lines(evaluation: GroundingEvaluation | None) -> list[str]:
    if evaluation is None:
        return ["No grounding score card for this run.", ""]
    composite = "not assessed (fewer than two components)" if evaluation.composite is None else f"{evaluation.composite}/10"
    lines = [
        f"**Score card** (computed by code, {md_inline(evaluation.formula_version)}; composite {composite}):",
        "",
        "| component | score | basis |",
        "|---|---:|---|",
    ]
    lines += [_component_row(c) for c in evaluation.components]
    return [*lines, ""]


def _component_row(component: ScoreComponent) -> str:
    score = "not assessed" if component.score is None else f"{component.score:.1f}"
    name = component.name.replace("_", " ")
    return f"| {name} | {score} | {md_inline(component.basis, limit=BASIS_CHARS)} |"


def _de_lines(summary: PredictionSummary) -> list[str]:
    if not summary.splits:
        return []
    lines = [
        f"**Differential expression** (significant: q < {summary.de_q_threshold:g}):",
        "",
        "| context | reference | cells | up | down | most raised (LFC, q) | most lowered (LFC, q) |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    lines += [_split_row(s) for s in summary.splits]
    return [*lines, ""]


def _split_row(split: SplitSummary) -> str:
    """One table row; context and gene names come from the data, so they are escaped."""
    up = ", ".join(_gene(g) for g in split.top_up[:TOP_GENES_SHOWN])
    down = ", ".join(_gene(g) for g in split.top_down[:TOP_GENES_SHOWN])
    return (
        f"| {md_inline(split.split_value)} | {_reference(split)} | {split.cells} | "
        f"{split.significant_up} | {split.significant_down} | {up or '-'} | {down or '-'} |"
    )


def _reference(split: SplitSummary) -> str:
    if split.reference == "synthetic_control":
        value = f" {md_inline(split.reference_value)}" if split.reference_value else ""
        return f"control{value} (synthetic, paired)"
    return "query input (unpaired)"


def _gene(change: GeneChange) -> str:
    return f"{md_inline(change.gene)} ({change.log_fold_change:+.2f}, q {change.q_value:.2g})"


def _enrichment_lines(evaluation: GroundingEvaluation | None) -> list[str]:
    rows = top_enrichment(evaluation, TOP_SETS_SHOWN)
    if not rows:
        return []
    lines = [
        "**Top enriched gene sets** (over-representation among each context's DE genes):",
        "",
        "| context | direction | gene set | overlap | q | expected |",
        "|---|---|---|---:|---:|---|",
    ]
    lines += [
        f"| {md_inline(r.split_value)} | {r.direction} | {md_inline(r.name, limit=80)} ({md_inline(r.set_id)}) | "
        f"{r.overlap}/{r.set_size} | {r.q_value:.2g} | {r.expected or '-'} |"
        for r in rows
    ]
    return [*lines, ""]
