"""The run's report: what was asked, who planned it, what the GPU job did, what it found.

One ``AnalysisReport`` is rendered three ways: Prefect artifacts (markdown, a table of top genes, a
link to the plot) for the run page, and ``report.md`` / ``report.html`` / ``report.json`` written
beside the run's outputs so the report outlives the Prefect database.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import anndata as ad
import markdown as md
from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import INPUTS
from prefect.logging import get_run_logger
from pydantic import BaseModel, Field

from clients.ocr.models import DocumentText
from clients.storage import join_uri, store_for
from inference.contract import JobManifest, PredictionSummary
from tasks.plan import AgentUsage, Findings, RunPlan
from tasks.prediction_plot import plot_predictions_vs_query
from tasks.staging import local_input


class JobFigures(BaseModel):
    """What the GPU job cost and ran on, from its manifest."""

    job_id: str
    device: str
    precision: str
    model_trained: bool
    model_parameters: int
    predictions_shape: tuple[int, int]
    num_steps: int
    wall_seconds: float
    gpu_seconds: float = Field(description="Wall time on a GPU; 0 when the job ran on the CPU.")
    peak_memory_mb: float

    @classmethod
    def from_manifest(cls, job_id: str, manifest: JobManifest) -> JobFigures:
        wall = round(sum(manifest.timings_s.values()), 2)
        return cls(
            job_id=job_id,
            device=manifest.device,
            precision=manifest.precision,
            model_trained=manifest.model_trained,
            model_parameters=manifest.model_parameters,
            predictions_shape=manifest.predictions_shape,
            num_steps=manifest.spec.num_steps,
            wall_seconds=wall,
            gpu_seconds=wall if manifest.device.startswith("cuda") else 0.0,
            peak_memory_mb=manifest.peak_memory_mb,
        )


class TopGene(BaseModel):
    split_value: str
    direction: str
    gene: str
    log_fold_change: float


class AnalysisReport(BaseModel):
    """What an analysis run returns and persists beside its outputs."""

    flow_run_id: str
    question: str
    plan: RunPlan
    job: JobFigures
    findings: Findings
    top_genes: list[TopGene]
    documents: list[str] = Field(default_factory=list, description="Documents the agent read, with the OCR engine.")
    outputs: dict[str, str] = Field(default_factory=dict, description="Name -> URI of every file the run wrote.")

    @property
    def llm_usage(self) -> list[AgentUsage]:
        return [u for u in (self.plan.usage, self.findings.usage) if u is not None]


def document_line(document: DocumentText) -> str:
    """``protocol.pdf (pages read by text-layer: 3, lightonocr: 2)``: what the agent read, and how."""
    engines = ", ".join(f"{engine}: {pages}" for engine, pages in document.engines.items())
    return f"{document.uri} (pages read by {engines})"


def top_gene_rows(summary: PredictionSummary) -> list[TopGene]:
    rows = []
    for split in summary.splits:
        for direction, genes in (("up", split.top_up), ("down", split.top_down)):
            rows.extend(
                TopGene(split_value=split.split_value, direction=direction, gene=g, log_fold_change=round(lfc, 3))
                for g, lfc in genes
            )
    return rows


def render_markdown(report: AnalysisReport) -> str:
    """The report as a reader wants it: question, plan, caveats first if the model is untrained."""
    plan, job, findings = report.plan, report.job, report.findings
    lines = [f"# Analysis report: {report.question}", ""]
    if not job.model_trained:
        lines += [
            "> **The STACK checkpoint is untrained (randomly initialised).** The predictions and findings "
            "below show that the pipeline works; they say nothing about biology. Set "
            "`STACKFLOWS_MODEL__CHECKPOINT_URI` to a trained checkpoint for real results.",
            "",
        ]
    lines += [
        "## Plan",
        f"- planned by: {plan.planned_by}",
        f"- contexts: `{plan.split_column}` = {', '.join(plan.split_values)}",
        f"- prompt cells: {plan.prompt_obs_filter or 'all'}",
        f"- query cells: {plan.query_obs_filter or 'all'}",
        f"- steps: {plan.num_steps}, seed: {plan.seed}, precision: {plan.precision}",
        f"- why: {plan.rationale}",
        "",
        "## GPU job",
        f"- job id: `{job.job_id}` on {job.device} ({job.precision})",
        f"- predictions: {job.predictions_shape[0]} cells x {job.predictions_shape[1]} genes",
        f"- wall time: {job.wall_seconds:.1f} s, GPU-seconds: {job.gpu_seconds:.1f}, peak memory: {job.peak_memory_mb:.0f} MB",
        f"- model: {job.model_parameters:,} parameters, {'trained' if job.model_trained else 'UNTRAINED'}",
        "",
        f"## Findings ({findings.written_by})",
        findings.markdown.strip(),
        "",
    ]
    if findings.caveats:
        lines += ["## Caveats", *[f"- {c}" for c in findings.caveats], ""]
    usage = report.llm_usage
    if usage:
        tokens = sum(u.input_tokens + u.output_tokens for u in usage)
        cost = sum(u.estimated_cost_usd for u in usage)
        lines += ["## Agent cost", f"- {sum(u.requests for u in usage)} requests, {tokens:,} tokens, ~${cost:.4f}", ""]
    else:
        lines += ["## Agent cost", "- no language model was called", ""]
    if report.documents:
        lines += ["## Documents read", *[f"- {d}" for d in report.documents], ""]
    if report.outputs:
        lines += ["## Outputs", *[f"- {name}: {uri}" for name, uri in report.outputs.items()], ""]
    return "\n".join(lines)


@task(name="publish-report", cache_policy=INPUTS, persist_result=True)
def publish_report(report: AnalysisReport, query_uri: str, predictions_uri: str, report_prefix: str) -> AnalysisReport:
    """Plot, write the report files beside the outputs, and show the report on the run page."""
    logger = get_run_logger()
    store = store_for(report_prefix)
    # local_input: the file itself when local; remote ones come from the download cache that
    # validation already filled for the query.
    query = ad.read_h5ad(local_input(query_uri))
    predictions = ad.read_h5ad(local_input(predictions_uri))
    query = query[query.obs_names.isin(predictions.obs["query_cell"])]  # the cells that were generated
    with tempfile.TemporaryDirectory(prefix="stackflows-report-") as tmp:
        png = plot_predictions_vs_query(query, predictions, "split_value", Path(tmp) / "predictions_vs_query.png")
        plot_uri = store.put_bytes_once(png.read_bytes(), join_uri(report_prefix, "predictions_vs_query.png"))

    files = {"report_markdown": "report.md", "report_html": "report.html", "report_json": "report.json"}
    outputs = {**report.outputs, "plot": plot_uri, **{k: join_uri(report_prefix, v) for k, v in files.items()}}
    report = report.model_copy(update={"outputs": outputs})

    text = render_markdown(report)
    html = f"<!doctype html><meta charset='utf-8'><title>stackflows report</title>\n{md.markdown(text, extensions=['tables'])}"
    store.put_bytes_once(text.encode(), outputs["report_markdown"])
    store.put_bytes_once(html.encode(), outputs["report_html"])
    store.put_bytes_once(report.model_dump_json(indent=2).encode(), outputs["report_json"])

    create_markdown_artifact(text, key="analysis-report", description=report.question[:200])
    create_table_artifact(
        [row.model_dump() for row in report.top_genes], key="top-genes", description="Top genes per context"
    )
    create_link_artifact(plot_uri, link_text="query input vs predictions (PNG)", key="prediction-plot")
    create_link_artifact(outputs["report_html"], link_text="the report (HTML)", key="report-html")
    logger.info("Report written to %s", outputs["report_markdown"])
    return report
