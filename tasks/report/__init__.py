"""The run's report: what was asked, who planned it, what the GPU job did, what it found.

One ``AnalysisReport`` is rendered three ways: Prefect artifacts (markdown, a table of top genes,
links to the plot and the HTML report) for the run page, and ``report.md`` / ``report.html`` /
``report.json`` written beside the run's outputs so the report outlives the Prefect database.

A question, an obs value or a model's findings may say anything, so none of it is trusted to shape
the page: user and data text is escaped, model markdown is defanged, the HTML is sanitised
(:mod:`tasks.report_text`), and an untrained model's warning always comes first. Artifacts link the
API's signed URLs (``clients.output_links``): a browser opens no ``file://`` or ``gs://`` link.

The package: ``model`` (what a report holds, a row per round of the closed loop), ``grounding_sections``
(score card, expectations, DE, enrichment, caveats), ``rounds`` (the rounds table, the stop reason, the
score trajectory), ``render`` (markdown and HTML), ``publish`` (the Prefect task: figures, files,
artifacts; the ``iterations`` table). The names callers use are here.
"""

from tasks.report.grounding_sections import (
    NOT_ASSESSED,
    de_gene_rows,
    enrichment_rows,
    expectations_markdown,
    is_query_as_control,
    reference_text,
    report_caveats,
    score_card_markdown,
    score_card_rows,
    score_text,
    top_enrichment,
)
from tasks.report.model import (
    AnalysisReport,
    JobFigures,
    RoundRow,
    TopGene,
    document_caveats,
    document_line,
    round_rows,
    stop_text,
    top_gene_rows,
)
from tasks.report.publish import grounding_figures, publish_iterations, publish_report
from tasks.report.render import render_html, render_markdown, report_sections
from tasks.report.rounds import round_table_rows

__all__ = [
    "NOT_ASSESSED", "AnalysisReport", "JobFigures", "RoundRow", "TopGene", "de_gene_rows",
    "document_caveats", "document_line", "enrichment_rows", "expectations_markdown", "grounding_figures",
    "is_query_as_control", "publish_iterations", "publish_report", "reference_text", "render_html",
    "render_markdown", "report_caveats", "report_sections", "round_rows", "round_table_rows", "score_card_markdown",
    "score_card_rows", "score_text", "stop_text", "top_enrichment", "top_gene_rows",
]  # fmt: skip
