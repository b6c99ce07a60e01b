"""publish_report with a grounding and a DE table: the volcano plots and the bar chart are written beside
the report and listed in its outputs, report.json carries the grounding, report.html embeds every figure,
and the run page gets the score-card, de-genes and enrichment tables with every cell escaped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prefect import flow
from prefect.context import FlowRunContext

from clients.settings import Settings
from clients.storage import join_uri, local_path_of
from tasks.report import AnalysisReport, publish_report
from tests.report import grounded
from tests.report.markup import parse_html, rendered
from tests.report.run_page import run_artifacts
from tests.report.test_report_publish import hostile_inputs

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def published(prefect_api: None, settings: Settings, tmp_path: Path) -> tuple[AnalysisReport, dict]:
    predictions_uri, gene_means_uri = hostile_inputs(tmp_path)
    de_uri = grounded.write_de_table(tmp_path / "de.parquet", [grounded.HOSTILE_GENE, "G1", "G2", "G3"])

    @flow(name="publish-grounded-report-test")
    def run() -> tuple[AnalysisReport, str]:
        run_id = str(FlowRunContext.get().flow_run.id)
        prefix = join_uri(settings.storage_root, "runs", run_id, "report")
        report = grounded.report(outputs={"predictions": predictions_uri})
        return publish_report(report, prefix, de_uri=de_uri, gene_means_uri=gene_means_uri), run_id

    report, run_id = run()
    return report, run_artifacts(run_id)


def test_the_figures_are_written_beside_the_report_and_listed(published: tuple[AnalysisReport, dict]) -> None:
    report, _ = published
    names = {"volcano_1": "volcano_1.png", "volcano_2": "volcano_2.png", "enrichment_plot": "enrichment_top_sets.png"}
    for name, file_name in names.items():
        uri = report.outputs[name]
        assert uri == join_uri(report.outputs["report_markdown"].rsplit("/", 1)[0], file_name)
        assert local_path_of(uri).read_bytes().startswith(PNG)
    assert report.outputs["de_table"].endswith("de.parquet")
    assert report.volcano_plots == {grounded.CONTEXTS[0]: report.outputs["volcano_1"], grounded.CONTEXTS[1]: report.outputs["volcano_2"]}

    markdown = local_path_of(report.outputs["report_markdown"]).read_text()
    assert "volcano\\_1.png" in markdown and "enrichment\\_top\\_sets.png" in markdown

    saved = json.loads(local_path_of(report.outputs["report_json"]).read_text())
    assert saved["grounding"]["composite"] == 8 and saved["expectations"]["gene_sets"][0]["name"] == grounded.HOSTILE_SET
    assert sum("descriptive" in c for c in saved["caveats"]) == 1  # stored once, as the report shows them


def test_report_html_embeds_every_figure(published: tuple[AnalysisReport, dict]) -> None:
    report, _ = published
    page = parse_html(local_path_of(report.outputs["report_html"]).read_text())
    images = [e for e in page.elements if e.tag == "img"]
    assert [i.attrs["alt"] for i in images] == [
        *[f"volcano plot of {c}" for c in grounded.CONTEXTS], "top gene sets by q", "query input vs predictions",
    ]  # fmt: skip
    assert all((i.attrs["src"] or "").startswith("data:image/png;base64,") for i in images)
    assert not page.tags() & {"script", "iframe", "object", "embed", "svg", "form"}
    assert page.event_handlers() == []


def test_the_run_page_gets_the_grounding_tables_escaped(published: tuple[AnalysisReport, dict]) -> None:
    _, artifacts = published
    assert {"analysis-report", "top-genes", "score-card", "de-genes", "enrichment"} <= set(artifacts)

    card = json.loads(artifacts["score-card"].data)
    scores = {row["component"].replace("\\", ""): row["score"] for row in card}
    assert scores["identity preservation"] == scores["backtest"] == "not assessed"
    assert scores["composite"] == "8 / 10"

    genes = json.loads(artifacts["de-genes"].data)
    assert len(genes) == 4 and {"log_fold_change", "q_value", "mean_treated", "fraction_same_direction"} <= set(genes[0])
    sets = json.loads(artifacts["enrichment"].data)
    for row in [*card, *genes, *sets]:
        for cell in row.values():
            for page in rendered(cell):  # the Prefect UI renders table cells as markdown
                assert page.tags() <= {"p"} and page.hrefs() == []
    shown = {" ".join(rendered(row["gene"])[1].text.split()) for row in genes}
    assert grounded.HOSTILE_GENE in shown
    assert " ".join(rendered(sets[0]["set"])[1].text.split()) == grounded.HOSTILE_SET
