"""The run's report: what was asked, who planned it, what the GPU job did, what it found.

One ``AnalysisReport`` is rendered three ways: Prefect artifacts (markdown, a table of top genes,
links to the plot and the HTML report) for the run page, and ``report.md`` / ``report.html`` /
``report.json`` written beside the run's outputs so the report outlives the Prefect database.

A question, an obs value or a model's findings may say anything, so none of it is trusted to shape
the page: user and data text is escaped, model markdown is defanged, the HTML is sanitised
(:mod:`tasks.report_text`), and an untrained model's warning always comes first. Artifacts link the
API's signed URLs (``clients.output_links``): a browser opens no ``file://`` or ``gs://`` link.
"""

from __future__ import annotations

import base64
import tempfile
from collections.abc import Callable
from pathlib import Path

import anndata as ad
from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import INPUTS
from prefect.logging import get_run_logger
from pydantic import BaseModel, Field

from clients.ocr.models import DocumentText
from clients.output_links import output_url
from clients.storage import join_uri, store_for
from inference.contract import JobManifest, PredictionSummary
from tasks.agent.plan import AgentUsage, Findings, RunPlan
from tasks.prediction_plot import plot_predictions_vs_query
from tasks.report_text import md_image, md_inline, md_output, md_quote, model_markdown, plain_data, safe_html
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
    caveats: list[str] = Field(
        default_factory=list,
        description="What the flow knows for certain beside the findings' caveats (e.g. pages OCR found no text on).",
    )
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


def _no_url(uri: str) -> str | None:
    return None


def _filter_text(obs_filter: dict[str, list[str]] | None) -> str:
    if not obs_filter:
        return "all"
    return "; ".join(f"{column} in {', '.join(values)}" for column, values in obs_filter.items())


def report_sections(report: AnalysisReport, url_for: Callable[[str], str | None] = _no_url) -> list[tuple[str, str]]:
    """The report as ``(name, markdown)`` sections, in reading order; ``url_for`` links outputs.

    Our own markdown shapes the page; everything a user, the data or a model wrote goes through
    :mod:`tasks.report_text`. An untrained model's warning is the first heading: nothing written by
    anyone else comes before it or can look like it.
    """
    plan, job, findings = report.plan, report.job, report.findings
    sections: list[tuple[str, str]] = []
    if not job.model_trained:
        sections.append(("warning", "\n".join([
            "# Untrained model: these results carry no biology",
            "",
            "> **The STACK checkpoint is untrained (randomly initialised).** The predictions and findings "
            "below show that the pipeline works; they say nothing about biology. Set "
            "`STACKFLOWS_MODEL__CHECKPOINT_URI` to a trained checkpoint for real results.",
        ])))  # fmt: skip
    sections.append(("question", f"# Analysis report\n\n## Question\n\n{md_quote(report.question)}"))
    sections.append(("plan", "\n".join([
        "## Plan",
        f"- planned by: {md_inline(plan.planned_by)}",
        f"- contexts: {md_inline(plan.split_column)} = {md_inline(', '.join(plan.split_values))}",
        f"- prompt cells: {md_inline(_filter_text(plan.prompt_obs_filter))}",
        f"- query cells: {md_inline(_filter_text(plan.query_obs_filter))}",
        f"- steps: {plan.num_steps}, seed: {plan.seed}, precision: {plan.precision}",
        f"- why: {md_inline(plan.rationale)}",
    ])))  # fmt: skip
    sections.append(("job", "\n".join([
        "## GPU job",
        f"- job id: {md_inline(job.job_id)} on {md_inline(job.device)} ({job.precision})",
        f"- predictions: {job.predictions_shape[0]} cells x {job.predictions_shape[1]} genes",
        f"- wall time: {job.wall_seconds:.1f} s, GPU-seconds: {job.gpu_seconds:.1f}, "
        f"peak memory: {job.peak_memory_mb:.0f} MB",
        f"- model: {job.model_parameters:,} parameters, {'trained' if job.model_trained else 'UNTRAINED'}",
    ])))  # fmt: skip
    findings_md = model_markdown(findings.markdown).strip()
    sections.append(("findings", f"## Findings ({md_inline(findings.written_by)})\n\n{findings_md}"))
    caveats = [*findings.caveats, *report.caveats]
    if caveats:
        sections.append(("caveats", "\n".join(["## Caveats", *[f"- {md_inline(c)}" for c in caveats]])))
    if "plot" in report.outputs:
        uri = report.outputs["plot"]
        url = url_for(uri)
        shown = md_image("query input vs predictions", url) if url else md_inline(uri)
        sections.append(("plot", f"## Query input vs predictions\n\n{shown}"))
    usage = report.llm_usage
    if usage:
        tokens = sum(u.input_tokens + u.output_tokens for u in usage)
        cost = sum(u.estimated_cost_usd for u in usage)
        line = f"- {sum(u.requests for u in usage)} requests, {tokens:,} tokens, ~${cost:.4f}"
    else:
        line = "- no language model was called"
    sections.append(("cost", f"## Agent cost\n{line}"))
    if report.documents:
        lines = [f"- {md_inline(d)}" for d in report.documents]
        sections.append(("documents", "\n".join(["## Documents read", *lines])))
    if report.outputs:
        lines = [f"- {md_inline(name)}: {md_output(uri, url_for(uri))}" for name, uri in report.outputs.items()]
        sections.append(("outputs", "\n".join(["## Outputs", *lines])))
    return sections


def render_markdown(report: AnalysisReport, url_for: Callable[[str], str | None] = _no_url) -> str:
    """The report as a reader wants it: the untrained-model warning first, then question, plan, job, findings."""
    return "\n\n".join(markdown for _, markdown in report_sections(report, url_for)) + "\n"


def render_html(report: AnalysisReport, plot_png: bytes | None = None) -> str:
    """A standalone page: every section sanitised, the plot embedded (a data: URI), no script allowed."""
    parts = []
    for name, markdown in report_sections(report):
        if name == "plot" and plot_png is not None:
            data = base64.b64encode(plot_png).decode()
            parts.append(
                "<h2>Query input vs predictions</h2>\n"
                f'<figure><img src="data:image/png;base64,{data}" alt="query input vs predictions"></figure>'
            )
        else:
            parts.append(safe_html(markdown))
    return _HTML_PAGE.format(body="\n".join(parts))


# The page may load nothing but its own inline images and style: a script that slipped past the
# sanitiser would not run either.
_HTML_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>stackflows report</title>
<style>body{{font-family:sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}}img{{max-width:100%}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.2rem .5rem}}</style>
</head><body>
{body}
</body></html>
"""


_NO_LINK = (
    "no browser link: set STACKFLOWS_API__PUBLIC_URL and STACKFLOWS_API__TOKEN for the worker "
    "to link run outputs through the API"
)


def _output_link_artifact(uri: str, text: str, key: str) -> None:
    """A link a browser opens (the API's signed URL); without one, the storage URI as text."""
    url = output_url(uri)
    if url:
        create_link_artifact(url, link_text=text, key=key)
    else:
        create_markdown_artifact(f"{md_inline(text)}: {md_inline(uri)}\n\n({md_inline(_NO_LINK)})", key=key)


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
        plot_png = png.read_bytes()
    plot_uri = store.put_bytes_once(plot_png, join_uri(report_prefix, "predictions_vs_query.png"))

    files = {"report_markdown": "report.md", "report_html": "report.html", "report_json": "report.json"}
    outputs = {**report.outputs, "plot": plot_uri, **{k: join_uri(report_prefix, v) for k, v in files.items()}}
    # No control characters (NUL and the like) in any file or artifact, whoever wrote them.
    report = AnalysisReport.model_validate(plain_data(report.model_copy(update={"outputs": outputs}).model_dump()))

    # The files name storage URIs (a signed link expires; the report outlives it); the run page links.
    store.put_bytes_once(render_markdown(report).encode(), outputs["report_markdown"])
    store.put_bytes_once(render_html(report, plot_png).encode(), outputs["report_html"])
    store.put_bytes_once(report.model_dump_json(indent=2).encode(), outputs["report_json"])

    title = "Analysis report" + ("" if report.job.model_trained else " (UNTRAINED model)")
    create_markdown_artifact(
        render_markdown(report, output_url),
        key="analysis-report",
        description=f"{title}: {md_inline(report.question, limit=200)}",
    )
    create_table_artifact(
        # the UI renders table cells as markdown: context and gene names are the data's text
        [{**r.model_dump(), "split_value": md_inline(r.split_value), "gene": md_inline(r.gene)} for r in report.top_genes],
        key="top-genes",
        description="Top genes per context",
    )
    _output_link_artifact(plot_uri, "query input vs predictions (PNG)", "prediction-plot")
    _output_link_artifact(outputs["report_html"], "the report (HTML)", "report-html")
    logger.info("Report written to %s", outputs["report_markdown"])
    return report
