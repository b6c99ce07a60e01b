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
import html
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple

import anndata as ad
import pandas as pd
from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import INPUTS
from prefect.logging import get_run_logger
from pydantic import BaseModel, Field

from clients.ocr.models import DocumentText
from clients.output_links import output_url
from clients.storage import join_uri, store_for
from inference.contract import DE_Q_THRESHOLD, JobManifest, PredictionSummary, Reference
from tasks.agent.plan import AgentUsage, Findings, RunPlan
from tasks.grounding.de_table import read_de_table
from tasks.grounding.models import ComponentName, EnrichmentRow, Expectations, GroundingEvaluation
from tasks.grounding.plots import enrichment_bar_png, volcano_png
from tasks.prediction_plot import plot_predictions_vs_query
from tasks.report_text import (
    md_image,
    md_inline,
    md_output,
    md_quote,
    md_table,
    model_markdown,
    plain,
    plain_data,
    safe_html,
)
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
        # timings_s holds the parts and, beside them, "total_s" (inference.stack_job): the total is
        # that one, never the parts plus it.
        timings = manifest.timings_s
        wall = round(timings["total_s"] if "total_s" in timings else sum(timings.values()), 2)
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
# Each ``*_rows`` function gives plain text cells (our figures and the data's words); the markdown
# tables and the Prefect table artifacts escape every cell, so both show the same thing.

COMPONENTS: tuple[ComponentName, ...] = (
    "pathway_coherence", "target_activation", "identity_preservation", "document_support", "backtest",
)  # fmt: skip
NOT_ASSESSED = "not assessed"
ENRICHMENT_ROWS_SHOWN = 25

UNTRAINED_CAVEAT = (
    "The STACK checkpoint is untrained: the predictions, the DE and the scores show that the pipeline works, "
    "not biology."
)
DESCRIPTIVE_P_CAVEAT = (
    "P-values and q-values over generated cells are descriptive: they shrink as more cells are generated, so a "
    "small q says the model moved a gene consistently, not that the effect is real."
)
QUERY_AS_CONTROL_CAVEAT = (
    "The reference is the query input itself (query-as-control), which is weaker than a synthetic control: "
    "the model's own generation bias is not cancelled out, and the test is unpaired."
)


def _label(name: str) -> str:
    return name.replace("_", " ")


def _num(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def score_text(score: float | None) -> str:
    """``7.5 / 10``, or ``not assessed``: an unassessed score is never shown as a number."""
    return NOT_ASSESSED if score is None else f"{score:.1f} / 10"


def reference_text(reference: str | None, reference_value: str | None = None) -> str:
    """What a DE compared against, in words; query-as-control is named as the weaker comparison."""
    if reference == "synthetic_control":
        under = f" generated under {reference_value!r}" if reference_value else ""
        return f"synthetic control (the query cells{under}, same job and seed, paired by query cell)"
    if reference in ("query_input", None):
        return "query input (query-as-control: weaker than a synthetic control)"
    weaker = is_query_as_control(reference) and "weaker" not in reference.casefold()
    return reference + (" (query-as-control: weaker than a synthetic control)" if weaker else "")


def is_query_as_control(reference: str) -> bool:
    """``query_input``, or the grounding's words for it ("query input (weaker: unpaired)"); a synthetic
    control's words name the query too ("paired by query cell"), so they are told apart by "synthetic"."""
    words = reference.casefold()
    return "synthetic" not in words and "query" in words


def score_card_rows(evaluation: GroundingEvaluation) -> list[dict[str, str]]:
    """One row per component in a fixed order (a missing one is "not assessed"), then the composite."""
    rows = []
    for name in COMPONENTS:
        component = evaluation.component(name)
        score = component.score if component is not None else None
        weight = evaluation.weights.get(name)
        weight_text = "" if weight is None else f"{weight:g}" + (" (not counted)" if score is None else "")
        basis = component.basis if component is not None else "not computed for this run"
        rows.append({"component": _label(name), "score": score_text(score), "weight": weight_text, "basis": basis})
    assessed = [c for c in evaluation.components if c.assessed]
    if evaluation.composite is None:
        composite, basis = NOT_ASSESSED, f"needs at least two assessed components; {len(assessed)} assessed"
    else:
        composite = f"{evaluation.composite} / 10"
        basis = "weighted mean of the assessed components, rounded half up: " + ", ".join(
            _label(c.name) for c in assessed
        )
    rows.append({"component": "composite", "score": composite, "weight": "", "basis": basis})
    return rows


def de_gene_rows(top_genes: list[TopGene]) -> list[dict[str, str]]:
    """The top genes per context with their DE figures (the ``de-genes`` artifact, the DE tables)."""
    return [
        {
            "context": g.split_value,
            "direction": g.direction,
            "gene": g.gene,
            "log_fold_change": _num(g.log_fold_change, ".3f"),
            "mean_treated": _num(g.mean_treated, ".3f"),
            "mean_reference": _num(g.mean_reference, ".3f"),
            "q_value": _num(g.q_value, ".2e"),
            "fraction_same_direction": _num(g.fraction_same_direction, ".2f"),
            "reference": reference_text(g.reference, g.reference_value) if g.reference else "",
            "test": g.test,
        }
        for g in top_genes
    ]


def _expected_text(row: EnrichmentRow) -> str:
    if row.expected is None:
        return ""
    return "yes" if row.expected == row.direction else f"no (expected {row.expected})"


def top_enrichment(rows: list[EnrichmentRow], limit: int = ENRICHMENT_ROWS_SHOWN) -> list[EnrichmentRow]:
    """The rows a reader looks at first: every expected set, then the rest by q (then overlap)."""
    ranked = sorted(rows, key=lambda r: (r.expected is None, r.q_value, -r.overlap))
    return ranked[:limit]


def enrichment_rows(rows: list[EnrichmentRow]) -> list[dict[str, str]]:
    return [
        {
            "context": r.split_value,
            "set": r.name,
            "set_id": r.set_id,
            "direction": r.direction,
            "overlap": f"{r.overlap} / {r.set_size}",
            "q_value": f"{r.q_value:.2e}",
            "expected": _expected_text(r),
        }
        for r in top_enrichment(rows)
    ]


def _table(rows: list[dict[str, str]], columns: dict[str, str]) -> str:
    """``columns``: row key -> header."""
    return md_table(list(columns.values()), [[row[key] for key in columns] for row in rows])


def _normal(text: str) -> str:
    return " ".join(text.split()).casefold()


def _query_as_control(report: AnalysisReport) -> bool:
    if report.grounding is not None and is_query_as_control(report.grounding.reference):
        return True
    return any(g.reference == "query_input" for g in report.top_genes)


def report_caveats(report: AnalysisReport) -> list[str]:
    """Every caveat once: the findings', the flow's, the grounding's, and the three the grounding
    always needs (untrained model, descriptive p-values, query-as-control) when nobody said them."""
    caveats = [*report.findings.caveats, *report.caveats, *(report.grounding.caveats if report.grounding else [])]
    has_statistics = report.grounding is not None or any(g.q_value is not None for g in report.top_genes)
    needed = [
        ("untrained", UNTRAINED_CAVEAT, not report.job.model_trained),
        ("descriptive", DESCRIPTIVE_P_CAVEAT, has_statistics),
        ("weaker", QUERY_AS_CONTROL_CAVEAT, has_statistics and _query_as_control(report)),
    ]
    for keyword, caveat, applies in needed:
        if applies and not any(keyword in _normal(c) for c in caveats):
            caveats.append(caveat)
    seen: set[str] = set()
    unique = []
    for caveat in caveats:
        if _normal(caveat) not in seen:
            seen.add(_normal(caveat))
            unique.append(caveat)
    return unique


def score_card_markdown(evaluation: GroundingEvaluation) -> str:
    weights = ", ".join(f"{md_inline(_label(name))} {weight:g}" for name, weight in evaluation.weights.items())
    return "\n".join([
        "## Score card",
        "",
        "Each score is 0-10, computed by code from the DE and the expectations (never by a language model); "
        "a component that could not be assessed says why and gets no number.",
        "",
        _table(score_card_rows(evaluation), {"component": "component", "score": "score", "weight": "weight", "basis": "basis"}),
        "",
        f"- composite weights: {weights or 'none set'} (unassessed components do not count)",
        f"- formula: {md_inline(evaluation.formula_version)}, knowledge pack: {md_inline(evaluation.pack_version)}",
        f"- reference: {md_inline(reference_text(evaluation.reference))}",
    ])  # fmt: skip


def expectations_markdown(expectations: Expectations) -> str:
    lines = [
        "## Expectations",
        "",
        f"- set by: {md_inline(expectations.set_by)}, knowledge pack: {md_inline(expectations.pack_version)}",
    ]
    cell_type = expectations.cell_type
    if cell_type is None:
        lines.append("- query cell type: not resolved to the Cell Ontology")
    else:
        lines.append(
            f"- query cell type: {md_inline(cell_type.ontology_id)} {md_inline(cell_type.label)} "
            f"(from {md_inline(repr(cell_type.matched))} by {md_inline(cell_type.matched_by)})"
        )
    if expectations.genes:
        rows = [[g.gene, g.direction, g.source, g.why] for g in expectations.genes]
        lines += ["", "### Genes expected to move", "", md_table(["gene", "expected", "said by", "why"], rows)]
    if expectations.gene_sets:
        rows = [[s.name, s.set_id, s.direction, str(s.genes), s.source, s.why] for s in expectations.gene_sets]
        lines += ["", "### Gene sets expected to move", "", md_table(["set", "id", "expected", "genes", "said by", "why"], rows)]
    if expectations.claims:
        rows = [
            [c.document, str(c.page), c.quote, c.gene or c.set_id or "", c.direction] for c in expectations.claims
        ]
        lines += ["", "### Claims in the documents", "", md_table(["document", "page", "claim", "gene or set", "direction"], rows)]
    if not (expectations.genes or expectations.gene_sets or expectations.claims):
        lines.append("- no genes, gene sets or claims were expected: target activation and pathway coherence go unassessed")
    if expectations.notes:
        lines += ["", "### Notes", "", *[f"- {md_inline(n)}" for n in expectations.notes]]
    return "\n".join(lines)


def _contexts(report: AnalysisReport) -> list[str]:
    """Treated contexts in the order the summary lists them, then any only the DE table has."""
    return list(dict.fromkeys([*(g.split_value for g in report.top_genes), *report.volcano_plots]))


_DE_COLUMNS = {
    "direction": "direction", "gene": "gene", "log_fold_change": "LFC", "mean_treated": "mean treated",
    "mean_reference": "mean reference", "q_value": "q", "fraction_same_direction": "fraction same direction",
}  # fmt: skip


class Section(NamedTuple):
    """A part of the report; a figure section also names the image it shows, for the HTML to embed."""

    name: str
    markdown: str
    figure: tuple[str, str] | None = None  # (uri, alt text)
    heading: str = ""


def _figure_section(name: str, heading: str, alt: str, uri: str, url_for: Callable[[str], str | None]) -> Section:
    url = url_for(uri)
    shown = md_image(alt, url) if url else f"{md_inline(alt)}: {md_inline(uri)}"
    return Section(name, f"{heading}\n\n{shown}" if heading else shown, (uri, alt), heading)


def _de_sections(report: AnalysisReport, url_for: Callable[[str], str | None]) -> list[Section]:
    contexts = _contexts(report)
    if not contexts:
        return []
    sections = [Section("de", "\n".join([
        "## Differential expression",
        "",
        "Each treated context's predictions against its reference, on log1p-CPM: LFC is the log fold change, "
        f"q is Benjamini-Hochberg across the genes tested in the context (significant: q below {DE_Q_THRESHOLD:g}), "
        "fraction same direction is the share of cells that moved the way the mean did. "
        "Every gene tested is in the DE table among the outputs.",
    ]))]  # fmt: skip
    rows = de_gene_rows(report.top_genes)
    for index, context in enumerate(contexts, 1):
        lines = [f"### Context: {md_inline(context)}"]
        genes = [g for g in report.top_genes if g.split_value == context]
        if genes and genes[0].reference is not None:
            lines.append(f"\n- reference: {md_inline(reference_text(genes[0].reference, genes[0].reference_value))}")
        if genes and genes[0].test:
            lines.append(f"- test: {md_inline(genes[0].test)}")
        if genes:
            lines += ["", _table([r for r in rows if r["context"] == context], _DE_COLUMNS)]
        sections.append(Section(f"de_context_{index}", "\n".join(lines)))
        if context in report.volcano_plots:
            alt = f"volcano plot of {context}"
            sections.append(_figure_section(f"volcano_{index}", "", alt, report.volcano_plots[context], url_for))
    return sections


_ENRICHMENT_COLUMNS = {
    "context": "context", "set": "set", "set_id": "id", "direction": "direction", "overlap": "overlap / size",
    "q_value": "q", "expected": "expected?",
}  # fmt: skip


def _enrichment_sections(report: AnalysisReport, url_for: Callable[[str], str | None]) -> list[Section]:
    evaluation = report.grounding
    if evaluation is None:
        return []
    lines = [
        "## Enrichment",
        "",
        "Over-representation of each gene set among a context's up or down DE genes, against the background of "
        "genes both the model and the input have; q is Benjamini-Hochberg across the sets tested for that "
        "context and direction. Expected sets come first.",
        "",
    ]
    if evaluation.enrichment:
        lines.append(_table(enrichment_rows(evaluation.enrichment), _ENRICHMENT_COLUMNS))
        hidden = len(evaluation.enrichment) - len(top_enrichment(evaluation.enrichment))
        if hidden > 0:
            lines.append(f"\n{hidden} more rows are in report.json.")
    else:
        lines.append("No gene set was tested.")
    sections = [Section("enrichment", "\n".join(lines))]
    if "enrichment_plot" in report.outputs:
        uri = report.outputs["enrichment_plot"]
        sections.append(_figure_section("enrichment_plot", "", "top gene sets by q", uri, url_for))
    return sections


def _no_url(uri: str) -> str | None:
    return None


def _filter_text(obs_filter: dict[str, list[str]] | None) -> str:
    if not obs_filter:
        return "all"
    return "; ".join(f"{column} in {', '.join(values)}" for column, values in obs_filter.items())


def _sections(report: AnalysisReport, url_for: Callable[[str], str | None] = _no_url) -> list[Section]:
    plan, job, findings = report.plan, report.job, report.findings
    sections: list[Section] = []
    if not job.model_trained:
        sections.append(Section("warning", "\n".join([
            "# Untrained model: these results carry no biology",
            "",
            "> **The STACK checkpoint is untrained (randomly initialised).** The predictions and findings "
            "below show that the pipeline works; they say nothing about biology. Set "
            "`STACKFLOWS_MODEL__CHECKPOINT_URI` to a trained checkpoint for real results.",
        ])))  # fmt: skip
    sections.append(Section("question", f"# Analysis report\n\n## Question\n\n{md_quote(report.question)}"))
    if report.grounding is not None:
        sections.append(Section("score_card", score_card_markdown(report.grounding)))
    if report.expectations is not None:
        sections.append(Section("expectations", expectations_markdown(report.expectations)))
    sections += _de_sections(report, url_for)
    sections += _enrichment_sections(report, url_for)
    sections.append(Section("plan", "\n".join([
        "## Plan",
        f"- planned by: {md_inline(plan.planned_by)}",
        f"- contexts: {md_inline(plan.split_column)} = {md_inline(', '.join(plan.split_values))}",
        f"- prompt cells: {md_inline(_filter_text(plan.prompt_obs_filter))}",
        f"- query cells: {md_inline(_filter_text(plan.query_obs_filter))}",
        f"- steps: {plan.num_steps}, seed: {plan.seed}, precision: {plan.precision}",
        f"- why: {md_inline(plan.rationale)}",
    ])))  # fmt: skip
    sections.append(Section("job", "\n".join([
        "## GPU job",
        f"- job id: {md_inline(job.job_id)} on {md_inline(job.device)} ({job.precision})",
        f"- predictions: {job.predictions_shape[0]} cells x {job.predictions_shape[1]} genes",
        f"- wall time: {job.wall_seconds:.1f} s, GPU-seconds: {job.gpu_seconds:.1f}, "
        f"peak memory: {job.peak_memory_mb:.0f} MB",
        f"- model: {job.model_parameters:,} parameters, {'trained' if job.model_trained else 'UNTRAINED'}",
    ])))  # fmt: skip
    findings_md = model_markdown(findings.markdown).strip()
    sections.append(Section("findings", f"## Findings ({md_inline(findings.written_by)})\n\n{findings_md}"))
    caveats = report_caveats(report)
    if caveats:
        sections.append(Section("caveats", "\n".join(["## Caveats", *[f"- {md_inline(c)}" for c in caveats]])))
    if "plot" in report.outputs:
        heading = "## Query input vs predictions"
        sections.append(_figure_section("plot", heading, "query input vs predictions", report.outputs["plot"], url_for))
    usage = report.llm_usage
    if usage:
        tokens = sum(u.input_tokens + u.output_tokens for u in usage)
        cost = sum(u.estimated_cost_usd for u in usage)
        line = f"- {sum(u.requests for u in usage)} requests, {tokens:,} tokens, ~${cost:.4f}"
    else:
        line = "- no language model was called"
    sections.append(Section("cost", f"## Agent cost\n{line}"))
    if report.documents:
        lines = [f"- {md_inline(d)}" for d in report.documents]
        sections.append(Section("documents", "\n".join(["## Documents read", *lines])))
    if report.outputs:
        lines = [f"- {md_inline(name)}: {md_output(uri, url_for(uri))}" for name, uri in report.outputs.items()]
        sections.append(Section("outputs", "\n".join(["## Outputs", *lines])))
    return sections


def report_sections(report: AnalysisReport, url_for: Callable[[str], str | None] = _no_url) -> list[tuple[str, str]]:
    """The report as ``(name, markdown)`` sections, in reading order; ``url_for`` links outputs.

    Our own markdown shapes the page; everything a user, the data or a model wrote goes through
    :mod:`tasks.report_text`. An untrained model's warning is the first heading: nothing written by
    anyone else comes before it or can look like it. The score card, expectations, DE and
    enrichment follow the question: they are what the run found, by code.
    """
    return [(s.name, s.markdown) for s in _sections(report, url_for)]


def render_markdown(report: AnalysisReport, url_for: Callable[[str], str | None] = _no_url) -> str:
    """The report as a reader wants it: the untrained-model warning first, then question, score card, DE, plan..."""
    return "\n\n".join(markdown for _, markdown in report_sections(report, url_for)) + "\n"


def render_html(report: AnalysisReport, plot_png: bytes | None = None, images: Mapping[str, bytes] | None = None) -> str:
    """A standalone page: every section sanitised, the figures embedded (data: URIs), no script allowed.

    ``images``: PNG bytes by the URI the report lists them under; ``plot_png`` is the main plot's.
    """
    images = dict(images or {})
    if plot_png is not None and "plot" in report.outputs:
        images.setdefault(report.outputs["plot"], plot_png)
    parts = []
    for section in _sections(report):
        if section.figure is not None and section.figure[0] in images:
            uri, alt = section.figure
            data = base64.b64encode(images[uri]).decode()
            heading = safe_html(section.heading) if section.heading else ""
            parts.append(
                f'{heading}<figure><img src="data:image/png;base64,{data}" alt="{html.escape(plain(alt))}"></figure>'
            )
        else:
            parts.append(safe_html(section.markdown))
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


def grounding_figures(report: AnalysisReport, de: pd.DataFrame | None) -> dict[str, tuple[str, str | None, bytes]]:
    """The grounding's PNGs as ``output name -> (file name, context or None, bytes)``: a volcano per
    context of the DE table (files numbered: a context's name is the data's text), and the top sets' bar chart."""
    figures: dict[str, tuple[str, str | None, bytes]] = {}
    if de is not None and len(de):
        genes = report.expectations.genes if report.expectations else []
        up = [g.gene for g in genes if g.direction == "up"]
        down = [g.gene for g in genes if g.direction == "down"]
        controls = {g.reference_value for g in report.top_genes if g.reference == "synthetic_control"}
        contexts = [c for c in dict.fromkeys(de["split_value"].astype(str)) if c not in controls]
        for index, context in enumerate(contexts, 1):
            png = volcano_png(de, context, expected_up=up, expected_down=down)
            figures[f"volcano_{index}"] = (f"volcano_{index}.png", context, png)
    if report.grounding is not None and report.grounding.enrichment:
        figures["enrichment_plot"] = ("enrichment_top_sets.png", None, enrichment_bar_png(report.grounding.enrichment))
    return figures


def _escaped(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Table artifact rows: the UI renders every cell as markdown, and cells hold the data's text."""
    return [{key: md_inline(value) for key, value in row.items()} for row in rows]


@task(name="publish-report", cache_policy=INPUTS, persist_result=True)
def publish_report(
    report: AnalysisReport, query_uri: str, predictions_uri: str, report_prefix: str, de_uri: str | None = None
) -> AnalysisReport:
    """Plot, write the report files beside the outputs, and show the report on the run page.

    ``de_uri``: the job's DE table; with it, a volcano plot per context is drawn and written too.
    """
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
    images = {plot_uri: plot_png}
    outputs = {**report.outputs, "plot": plot_uri}
    volcanoes = dict(report.volcano_plots)
    if de_uri is not None and de_uri not in outputs.values():
        outputs["de_table"] = de_uri  # listed once, under whatever name the flow gave it
    for name, (file_name, context, figure_png) in grounding_figures(report, read_de_table(de_uri) if de_uri else None).items():
        uri = store.put_bytes_once(figure_png, join_uri(report_prefix, file_name))
        images[uri] = figure_png
        outputs[name] = uri
        if context is not None:
            volcanoes[context] = uri

    files = {"report_markdown": "report.md", "report_html": "report.html", "report_json": "report.json"}
    outputs.update({k: join_uri(report_prefix, v) for k, v in files.items()})
    # The caveats the report shows are stored too (report.json carries them), each once.
    findings_caveats = {" ".join(c.split()).casefold() for c in report.findings.caveats}
    caveats = [c for c in report_caveats(report) if " ".join(c.split()).casefold() not in findings_caveats]
    update = {"outputs": outputs, "volcano_plots": volcanoes, "caveats": caveats}
    # No control characters (NUL and the like) in any file or artifact, whoever wrote them.
    report = AnalysisReport.model_validate(plain_data(report.model_copy(update=update).model_dump()))

    # The files name storage URIs (a signed link expires; the report outlives it); the run page links.
    store.put_bytes_once(render_markdown(report).encode(), outputs["report_markdown"])
    store.put_bytes_once(render_html(report, images=images).encode(), outputs["report_html"])
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
    if report.grounding is not None:
        create_table_artifact(_escaped(score_card_rows(report.grounding)), key="score-card", description="Score card (0-10)")
        if report.grounding.enrichment:
            rows = _escaped(enrichment_rows(report.grounding.enrichment))
            create_table_artifact(rows, key="enrichment", description="Top gene sets")
    if report.top_genes:
        rows = _escaped(de_gene_rows(report.top_genes))
        create_table_artifact(rows, key="de-genes", description="Top DE genes per context, against its reference")
    _output_link_artifact(plot_uri, "query input vs predictions (PNG)", "prediction-plot")
    _output_link_artifact(outputs["report_html"], "the report (HTML)", "report-html")
    logger.info("Report written to %s", outputs["report_markdown"])
    return report
