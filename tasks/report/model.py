"""What a run's report holds: the request, plan, job figures, findings, grounding and outputs."""

from __future__ import annotations

from pydantic import BaseModel, Field

from clients.ocr.models import DocumentText
from inference.contract import JobManifest, PredictionSummary, Reference, total_seconds
from tasks.agent.plan import AgentUsage, Findings, RunPlan
from tasks.grounding.models import (
    Expectations,
    GroundingEvaluation,
)
from tasks.loop.models import STOP_WORDS, RoundRecord
from tasks.loop.table import describe_filter


class JobFigures(BaseModel):
    """What the GPU job cost and ran on, from its manifest (a sharded job's: from its parts, and the merge beside)."""

    job_id: str
    device: str
    precision: str
    model_trained: bool
    model_parameters: int
    predictions_shape: tuple[int, int]
    num_steps: int
    wall_seconds: float = Field(description="The job's total; a sharded job's: its longest shard's.")
    gpu_seconds: float = Field(description="Wall time on a GPU (a sharded job: summed over its shards); 0 on the CPU.")
    peak_memory_mb: float = Field(description="The job's peak; a sharded job's: its largest shard's.")
    preemptions: int = Field(
        default=0, ge=0, description="Times Batch preempted the job's VM before this attempt (each retried by itself)."
    )
    shards: int = Field(default=1, ge=1, description="Shards the query was split into (1: not sharded).")
    merge_seconds: float | None = Field(default=None, description="A sharded job's merge: its total (on a CPU).")

    @classmethod
    def from_manifest(cls, job_id: str, manifest: JobManifest, preemptions: int = 0) -> JobFigures:
        # A merge's manifest holds the merge's own device and figures; the GPU work is in its parts.
        parts = manifest.parts
        runs = [(p.device, p.timings_s, p.peak_memory_mb) for p in parts] or [
            (manifest.device, manifest.timings_s, manifest.peak_memory_mb)
        ]
        return cls(
            job_id=job_id,
            device=", ".join(sorted({device for device, _, _ in runs})),
            precision=manifest.precision,
            model_trained=manifest.model_trained,
            model_parameters=manifest.model_parameters,
            predictions_shape=manifest.predictions_shape,
            num_steps=manifest.spec.num_steps,
            wall_seconds=round(max(total_seconds(timings) for _, timings, _ in runs), 2),
            gpu_seconds=manifest.gpu_seconds,
            peak_memory_mb=max(peak for _, _, peak in runs),
            preemptions=preemptions,
            shards=max(1, len(parts)),
            merge_seconds=round(total_seconds(manifest.timings_s), 2) if parts else None,
        )


class TopGene(BaseModel):
    """One of a context's top genes against its reference, with the DE figures behind it (``GeneChange``).

    The figures are optional so a report of a job without DE (or an old one) still loads.
    """

    split_value: str
    direction: str
    gene: str
    log_fold_change: float
    mean_treated: float | None = None
    mean_reference: float | None = None
    p_value: float | None = None
    q_value: float | None = None
    fraction_same_direction: float | None = None
    reference: Reference | None = None
    reference_value: str | None = None
    test: str = ""


class RoundRow(BaseModel):
    """One round of the closed loop as the report and the ``iterations`` artifact show it.

    Plain figures and the data's text (escaped where shown); a component the round could not assess
    is None, never a number.
    """

    k: int = Field(ge=1)
    planned_by: str
    split_column: str = ""
    contexts: list[str] = Field(default_factory=list)
    control: str | None = None
    prompt_cells: str = Field(default="all", description="The prompt cells' filter, in words.")
    query_cells: str = Field(default="all", description="The query cells' filter, in words.")
    query_cell_count: int | None = Field(default=None, description="Query cells the job generated from.")
    steps: int
    job_id: str
    reused_job_of: int | None = Field(default=None, description="The earlier round whose job this round reused.")
    gpu_seconds: float = 0.0
    components: dict[str, float | None] = Field(default_factory=dict, description="Component -> 0-10 score, None: not assessed.")
    composite: int | None = None
    decision: str = Field(default="", description="tasks.loop.table.decision_text: 'go on' or 'stop: ...'.")

    @classmethod
    def from_record(cls, record: RoundRecord, decision: str = "") -> RoundRow:
        plan = record.plan
        return cls(
            k=record.k,
            planned_by=plan.planned_by,
            split_column=plan.split_column,
            contexts=list(plan.split_values),
            control=plan.control_value,
            prompt_cells=describe_filter(plan.prompt_obs_filter),
            query_cells=describe_filter(plan.query_obs_filter),
            query_cell_count=record.summary.query_cells,
            steps=plan.num_steps,
            job_id=record.job_id,
            reused_job_of=record.reused_job_of,
            gpu_seconds=record.gpu_seconds,
            components={c.name: c.score for c in record.evaluation.components},
            composite=record.evaluation.composite,
            decision=decision,
        )


def round_rows(records: list[RoundRecord], decisions: dict[int, str] | None = None) -> list[RoundRow]:
    """A row per round, in round order; ``decisions``: round -> what was decided after it
    (``tasks.loop.table.decision_text``; '' while undecided)."""
    decisions = decisions or {}
    return [RoundRow.from_record(r, decisions.get(r.k, "")) for r in sorted(records, key=lambda r: r.k)]


def stop_text(reason: str | None, detail: str = "") -> str:
    """Why the loop ended, in words (``STOP_WORDS``), with its detail; '' when no reason is known."""
    if reason is None:
        return ""
    words = STOP_WORDS.get(reason, reason)
    return f"{words} ({detail})" if detail else words


class AnalysisReport(BaseModel):
    """What an analysis run returns and persists beside its outputs."""

    flow_run_id: str
    question: str
    plan: RunPlan
    job: JobFigures
    findings: Findings
    top_genes: list[TopGene]
    documents: list[str] = Field(default_factory=list, description="Documents the agent read, with the OCR engine.")
    caveats: list[str] = Field(
        default_factory=list,
        description="What the flow knows for certain beside the findings' caveats (e.g. pages OCR found no text on).",
    )
    outputs: dict[str, str] = Field(default_factory=dict, description="Name -> URI of every file the run wrote.")
    expectations: Expectations | None = Field(default=None, description="What the question predicts, fixed for the run.")
    grounding: GroundingEvaluation | None = Field(default=None, description="The score card, computed by code.")
    volcano_plots: dict[str, str] = Field(
        default_factory=dict, description="Treated context -> URI of its volcano plot (also in outputs)."
    )
    # The closed loop: every round, the one the rest of the report shows (its plan, job, DE and
    # score card), and why the loop ended. Empty for a report from before the loop.
    rounds: list[RoundRow] = Field(default_factory=list, description="A row per round, in order.")
    best_round: int | None = Field(default=None, description="k of the round the report shows: the run's result.")
    stop_reason: str | None = Field(default=None, description="A StopReason (tasks/loop/models.py).")
    stop_detail: str = ""

    @property
    def shown_round(self) -> int | None:
        """The round the score card, DE, enrichment, plan and job are from, when there was more than one."""
        return self.best_round if len(self.rounds) > 1 else None

    @property
    def llm_usage(self) -> list[AgentUsage]:
        expectations = self.expectations.usage if self.expectations is not None else None
        return [u for u in (expectations, self.plan.usage, self.findings.usage) if u is not None]


def document_line(document: DocumentText) -> str:
    """``protocol.pdf (pages read by text-layer: 3, lightonocr: 2)``: what the agent read, and how."""
    engines = ", ".join(f"{engine}: {pages}" for engine, pages in document.engines.items())
    return f"{document.uri} (pages read by {engines})"


def top_gene_rows(summary: PredictionSummary) -> list[TopGene]:
    """Each treated context's top genes up and down, with their DE figures and the context's reference."""
    rows = []
    for split in summary.splits:
        context = {
            "split_value": split.split_value,
            "reference": split.reference,
            "reference_value": split.reference_value,
            "test": split.test,
        }
        for direction, changes in (("up", split.top_up), ("down", split.top_down)):
            rows.extend(
                TopGene(
                    **context,
                    direction=direction,
                    gene=c.gene,
                    log_fold_change=round(c.log_fold_change, 3),
                    mean_treated=round(c.mean_treated, 3),
                    mean_reference=round(c.mean_reference, 3),
                    p_value=c.p_value,
                    q_value=c.q_value,
                    fraction_same_direction=round(c.fraction_same_direction, 3),
                )
                for c in changes
            )
    return rows


def document_caveats(documents: list[DocumentText]) -> list[str]:
    """``scan.pdf: no text found on page 2``: a page OCR found nothing on is said, never passed on silently."""
    caveats = []
    for document in documents:
        pages = document.pages_without_text
        if pages:
            name = document.uri.rstrip("/").rsplit("/", 1)[-1]
            where = f"page {pages[0]}" if len(pages) == 1 else f"pages {', '.join(map(str, pages))}"
            caveats.append(f"{name}: no text found on {where}; the agent read nothing there")
    return caveats


# --- The grounding: score card, expectations, DE, enrichment --------------------------------------
