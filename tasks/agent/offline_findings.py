"""Findings written from the prediction summary alone, and the caveats every interpretation carries.

The caveats are facts the flow knows for certain (an untrained checkpoint, thin contexts), so they
are added by code, not left to a model to remember.
"""

from __future__ import annotations

from inference.contract import PredictionSummary, SplitSummary
from tasks.agent.plan import Findings, RunPlan
from tasks.report_text import md_inline

OFFLINE_WRITER = "offline summary (no model read the results)"
UNTRAINED_CAVEAT = (
    "The STACK checkpoint was untrained (randomly initialised): these predictions carry no biology. "
    "Point STACKFLOWS_MODEL__CHECKPOINT_URI at a trained checkpoint for real findings."
)
TOP_GENES_SHOWN = 10


def summary_caveats(plan: RunPlan, summary: PredictionSummary) -> list[str]:
    """What a reader must know before trusting the findings."""
    caveats = []
    if not summary.model_trained:
        caveats.append(UNTRAINED_CAVEAT)
    if summary.mode != "generate":
        caveats.append(f"The job ran in {summary.mode!r} mode: there are no generated contexts to compare.")
    planned = set(plan.split_values)
    produced = {s.split_value for s in summary.splits}
    if missing := sorted(planned - produced):
        caveats.append(f"The plan asked for contexts the job did not produce: {', '.join(missing)}.")
    if summary.query_cells < 20:
        caveats.append(f"Only {summary.query_cells} query cells were generated; shifts are noisy.")
    caveats.append(
        "Shifts compare predicted expression with the query cells' own expression (log1p CPM); they are "
        "model predictions, not measurements."
    )
    return caveats


def offline_findings(plan: RunPlan, summary: PredictionSummary) -> Findings:
    """Deterministic markdown from the summary, saying plainly that no model wrote it.

    The markdown has no heading and no caveats section: the report adds both (caveats from the list).
    """
    caveats = summary_caveats(plan, summary)
    lines = [
        "_Written from the prediction summary by code: no language model read these results "
        "(set ANTHROPIC_API_KEY for an interpretation)._",
        "",
    ]
    if not summary.model_trained:
        lines += [f"> **Untrained model.** {UNTRAINED_CAVEAT}", ""]
    lines += [
        f"{summary.query_cells} query cells over {summary.genes} genes were generated under "
        f"{len(summary.splits)} contexts of {md_inline(plan.split_column)}.",
        "",
    ]
    ranked = sorted(summary.splits, key=lambda s: s.mean_shift, reverse=True)
    if ranked:
        lines += ["| context | cells | mean shift | most raised | most lowered |", "|---|---:|---:|---|---|"]
        lines += [_split_row(s) for s in ranked]
    if len(ranked) > 1:
        lines += [
            "",
            f"The context that moves the query cells most is **{md_inline(ranked[0].split_value)}** "
            f"(mean shift {ranked[0].mean_shift:.3f}); the least is **{md_inline(ranked[-1].split_value)}** "
            f"({ranked[-1].mean_shift:.3f}).",
            "",
        ]
    return Findings(
        markdown="\n".join(lines) + "\n",
        caveats=caveats,
        written_by=OFFLINE_WRITER,
        model_trained=summary.model_trained,
    )


def _split_row(split: SplitSummary) -> str:
    """One table row; context and gene names come from the data, so they are escaped."""
    up = ", ".join(f"{md_inline(g)} ({lfc:+.2f})" for g, lfc in split.top_up[:TOP_GENES_SHOWN // 2])
    down = ", ".join(f"{md_inline(g)} ({lfc:+.2f})" for g, lfc in split.top_down[:TOP_GENES_SHOWN // 2])
    return f"| {md_inline(split.split_value)} | {split.cells} | {split.mean_shift:.3f} | {up or '-'} | {down or '-'} |"
