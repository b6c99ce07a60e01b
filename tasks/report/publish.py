"""Publish a report: figures and files beside the run's outputs, artifacts on the run page."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.cache_policies import INPUTS
from prefect.logging import get_run_logger

from clients.output_links import output_url
from clients.storage import join_uri, store_for
from tasks.grounding.de_table import read_de_table
from tasks.grounding.plots import enrichment_bar_png, trajectory_png, volcano_png
from tasks.prediction_plot import plot_predictions_vs_query
from tasks.report.grounding_sections import (
    de_gene_rows,
    enrichment_rows,
    report_caveats,
    score_card_rows,
)
from tasks.report.model import AnalysisReport, RoundRow
from tasks.report.render import render_html, render_markdown
from tasks.report.rounds import TRAJECTORY, iteration_artifact_rows
from tasks.report_text import (
    md_inline,
    plain_data,
)

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
    context of the DE table (files numbered: a context's name is the data's text), the top sets' bar chart,
    and with several rounds the scores across them."""
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
    if len(report.rounds) > 1:
        figures[TRAJECTORY] = ("score_trajectory.png", None, trajectory_png(report.rounds, best_round=report.best_round))
    return figures


def _escaped(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Table artifact rows: the UI renders every cell as markdown, and cells hold the data's text."""
    return [{key: md_inline(value) for key, value in row.items()} for row in rows]


def publish_iterations(rows: list[RoundRow]) -> None:
    """The ``iterations`` table on the run page, a row per round so far: the flow calls it after every
    round, so a user watching the run sees the loop move (each call is a new version under the key;
    ``GET /runs/{id}`` reads the latest one's round, composite and decision)."""
    create_table_artifact(
        iteration_artifact_rows(rows),
        key="iterations",
        description=f"Rounds of the closed loop so far: {len(rows)}",
    )


def predictions_plot_png(gene_means_uri: str) -> bytes:
    """The query-vs-predictions PNG, drawn from the job's gene means (a few MB at most, whatever the
    number of cells: the flow never reads the query or predictions matrices)."""
    data = store_for(gene_means_uri).get_bytes(gene_means_uri)
    gene_means = pd.read_parquet(io.BytesIO(data))
    with tempfile.TemporaryDirectory(prefix="stackflows-report-") as tmp:
        return plot_predictions_vs_query(gene_means, Path(tmp) / "predictions_vs_query.png").read_bytes()


@task(name="publish-report", cache_policy=INPUTS, persist_result=True)
def publish_report(
    report: AnalysisReport, report_prefix: str, de_uri: str | None = None, gene_means_uri: str | None = None
) -> AnalysisReport:
    """Plot, write the report files beside the outputs, and show the report on the run page.

    ``de_uri``: the job's DE table; with it, a volcano plot per context is drawn and written too.
    ``gene_means_uri``: the job's per-gene means (``gene_means.parquet``); with it, the query input
    against each context's predictions is drawn. Embed mode writes none: the plot is then left out.
    With several rounds, ``report`` holds the best round's plan, job, summary, evaluation (and
    ``de_uri`` is its DE table) plus a row per round; the scores across rounds are drawn beside it.
    """
    logger = get_run_logger()
    store = store_for(report_prefix)
    images: dict[str, bytes] = {}
    outputs = dict(report.outputs)
    if gene_means_uri is not None:
        plot_png = predictions_plot_png(gene_means_uri)
        plot_uri = store.put_bytes_once(plot_png, join_uri(report_prefix, "predictions_vs_query.png"))
        images[plot_uri] = plot_png
        outputs.update(gene_means=gene_means_uri, plot=plot_uri)
    else:
        logger.info("No per-gene means from the job (embed mode writes none): the query-vs-predictions plot is left out")
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
    if "plot" in outputs:
        _output_link_artifact(outputs["plot"], "query input vs predictions (PNG)", "prediction-plot")
    _output_link_artifact(outputs["report_html"], "the report (HTML)", "report-html")
    logger.info("Report written to %s", outputs["report_markdown"])
    return report
