"""The grounded report, rendered without Prefect: score card, expectations, DE, enrichment, caveats,
escaping; the old report (no grounding) still renders; the job's wall time; the figures."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime

import matplotlib.image as mpimg
import pandas as pd
import pytest

from inference.contract import GeneChange, JobManifest, PredictionSummary, SplitSummary, StackJobSpec
from tasks.grounding.plots import enrichment_bar_png, headless_pyplot, neg_log10, save_png, volcano_png
from tasks.grounding.caveats import DESCRIPTIVE_P as DESCRIPTIVE_P_CAVEAT
from tasks.grounding.caveats import QUERY_AS_CONTROL as QUERY_AS_CONTROL_CAVEAT
from tasks.report import (
    JobFigures,
    render_html,
    render_markdown,
    report_caveats,
    score_card_markdown,
    top_gene_rows,
)
from tests.report import grounded
from tests.report.markup import Page, assert_inert, parse_html, rendered

GROUNDED_HEADINGS = [
    "Untrained model: these results carry no biology",
    "Analysis report",
    "Question",
    "Score card",
    "Expectations",
    "Genes expected to move",
    "Gene sets expected to move",
    "Claims in the documents",
    "Notes",
    "Differential expression",
    *[f"Context: {c}" for c in grounded.CONTEXTS],
    "Enrichment",
    "Plan",
    "GPU job",
    "Findings (offline summary)",
    "Caveats",
    "Agent cost",
]


def table_rows(page: Page) -> list[list[str]]:
    """Every table body row of the page as its cells' text."""
    rows: list[list[str]] = []
    for element in page.elements:
        if element.tag == "tr":
            rows.append([])
        elif element.tag == "td":
            rows[-1].append(" ".join(element.text.split()))
    return [row for row in rows if row]


def caveat_lines(markdown: str) -> list[str]:
    section = markdown.split("## Caveats\n", 1)[1].split("\n\n", 1)[0]
    return [line for line in section.splitlines() if line.startswith("- ")]


def test_the_score_card_says_not_assessed_and_never_a_number_for_unassessed_components() -> None:
    for page in rendered(score_card_markdown(grounded.evaluation())):
        rows = {row[0]: row for row in table_rows(page)}
        assert list(rows) == [
            "pathway coherence", "target activation", "identity preservation", "document support", "backtest",
            "composite",
        ]  # fmt: skip
        assert rows["pathway coherence"][1] == "7.5 / 10" and rows["target activation"][1] == "8.2 / 10"
        for name in ("identity preservation", "document support", "backtest"):
            assert rows[name][1] == "not assessed" and not re.search(r"\d", rows[name][1])
        assert rows["document support"][3] == "offline: no model read the documents"
        assert rows["composite"][1] == "8 / 10"
        text = " ".join(page.text.split())
        assert "pathway coherence 0.3, target activation 0.3, identity preservation 0.2" in text
        assert "formula: grounding-1, knowledge pack: pack-2026.1" in text
        assert "query-as-control: weaker than a synthetic control" in text


def test_a_composite_of_none_is_not_assessed() -> None:
    for page in rendered(score_card_markdown(grounded.evaluation(composite=None))):
        [composite] = [row for row in table_rows(page) if row[0] == "composite"]
        assert composite[1] == "not assessed" and "2 assessed" in composite[3]


@pytest.mark.parametrize("reference", ["synthetic_control", "synthetic control: PBS, paired by query cell"])
def test_a_synthetic_control_is_not_called_weaker(reference: str) -> None:
    text = rendered(score_card_markdown(grounded.evaluation(reference=reference)))[0].text
    assert "synthetic control" in text and "weaker" not in text


def test_the_groundings_words_for_query_as_control_are_shown_once_as_weaker() -> None:
    text = rendered(score_card_markdown(grounded.evaluation(reference="query input (weaker: unpaired)")))[0].text
    assert "reference: query input (weaker: unpaired)" in " ".join(text.split()) and text.count("weaker") == 1


def test_caveats_come_from_the_evaluation_once_each_and_the_needed_ones_are_added() -> None:
    report = grounded.report()
    lines = caveat_lines(render_markdown(report))
    assert len(lines) == len(set(lines)) == 3  # the untrained one is in findings and twice in the evaluation
    assert any("untrained" in line for line in lines) and any("descriptive" in line for line in lines)
    assert "weaker" in lines[-1]  # query-as-control, nobody said it: the report does

    bare = report.model_copy(update={"grounding": grounded.evaluation(caveats=[]), "findings": report.findings.model_copy(update={"caveats": []})})
    assert DESCRIPTIVE_P_CAVEAT in report_caveats(bare) and QUERY_AS_CONTROL_CAVEAT in report_caveats(bare)
    synthetic = bare.model_copy(update={"grounding": grounded.evaluation(caveats=[], reference="synthetic control: PBS, paired by query cell"),
                                        "top_genes": [g.model_copy(update={"reference": "synthetic_control"}) for g in bare.top_genes]})  # fmt: skip
    assert QUERY_AS_CONTROL_CAVEAT not in report_caveats(synthetic)


def test_hostile_set_names_genes_and_claims_read_as_typed_and_shape_nothing() -> None:
    markdown = render_markdown(grounded.report())
    for page in rendered(markdown):
        assert page.headings() == GROUNDED_HEADINGS
        assert_inert(page)
        assert page.hrefs() == []
        text = " ".join(page.text.split())
        for hostile in (grounded.HOSTILE_SET, grounded.HOSTILE_GENE, grounded.HOSTILE_NOTE, grounded.HOSTILE_LABEL):
            assert hostile in text, hostile
        assert " ".join(grounded.HOSTILE_CLAIM.split()) in text
        widths = {len(row) for row in table_rows(page)}
        assert widths <= {4, 5, 6, 7}  # a "|" in a name never adds a cell: every table keeps its width
    html = parse_html(render_html(grounded.report()))
    assert html.headings() == GROUNDED_HEADINGS
    assert not html.tags() & {"script", "iframe", "object", "embed", "svg", "form", "img"}
    assert html.event_handlers() == []


def test_the_de_tables_show_each_contexts_figures_reference_and_test() -> None:
    page = rendered(render_markdown(grounded.report()))[0]
    rows = [row for row in table_rows(page) if row[:2] == ["up", grounded.HOSTILE_GENE]]
    assert rows == [["up", grounded.HOSTILE_GENE, "1.500", "2.500", "1.000", "3.00e-03", "0.90"]] * 2
    assert "test: wilcoxon rank-sum, unpaired" in page.text
    assert "reference: query input (query-as-control: weaker than a synthetic control)" in page.text


def test_the_enrichment_table_puts_expected_sets_first() -> None:
    page = rendered(render_markdown(grounded.report()))[0]
    rows = [row for row in table_rows(page) if len(row) == 7 and row[2].startswith("GO:")]
    assert rows == [
        [grounded.CONTEXTS[0], grounded.HOSTILE_SET, "GO:0034340", "up", "5 / 12", "2.00e-04", "yes"],
        [grounded.CONTEXTS[1], "inflammatory response", "GO:0006954", "down", "2 / 30", "6.00e-01", ""],
    ]


def test_a_report_without_grounding_renders_as_before() -> None:
    markdown = render_markdown(grounded.report(grounded=False))
    for page in rendered(markdown):
        headings = page.headings()
        assert headings[:3] == ["Untrained model: these results carry no biology", "Analysis report", "Question"]
        assert not {"Score card", "Expectations", "Enrichment"} & set(headings)
        assert "Differential expression" in headings and "Caveats" in headings


def test_job_wall_time_counts_total_s_once() -> None:
    spec = StackJobSpec(query_uri="file:///q.h5ad", prompt_uri="file:///p.h5ad", checkpoint_uri="file:///c",
                        gene_list_uri="file:///g.txt", split_column="condition", output_prefix="file:///out")  # fmt: skip
    now = datetime.now(UTC)
    manifest = JobManifest(
        spec=spec, model_trained=False, model_parameters=10, device="cuda:0", precision="bf16",
        timings_s={"load_s": 1.0, "generate_s": 2.0, "write_s": 0.5, "total_s": 3.75}, peak_memory_mb=1.0,
        outputs={}, predictions_shape=(4, 8), started_at=now, finished_at=now,
    )  # fmt: skip
    figures = JobFigures.from_manifest("job", manifest)
    assert figures.wall_seconds == 3.75 and figures.gpu_seconds == 3.75
    older = manifest.model_copy(update={"timings_s": {"load_s": 1.0, "generate_s": 2.0}, "device": "cpu"})
    assert JobFigures.from_manifest("job", older).wall_seconds == 3.0  # no total: the parts
    assert JobFigures.from_manifest("job", older).gpu_seconds == 0.0


def test_top_gene_rows_carry_the_de_figures_and_the_reference() -> None:
    change = GeneChange(gene="IFI6", mean_treated=2.12345, mean_reference=1.0, log_fold_change=1.12345,
                        p_value=1e-4, q_value=2e-3, fraction_same_direction=0.87654)  # fmt: skip
    split = SplitSummary(split_value="IFN", cells=4, reference="synthetic_control", reference_value="PBS",
                         test="wilcoxon signed-rank", mean_shift=0.1, top_up=[change], top_down=[])  # fmt: skip
    summary = PredictionSummary(mode="generate", model_trained=False, query_cells=4, genes=8, splits=[split])
    [row] = top_gene_rows(summary)
    assert (row.gene, row.direction, row.log_fold_change, row.mean_treated, row.q_value) == ("IFI6", "up", 1.123, 2.123, 2e-3)
    assert (row.fraction_same_direction, row.reference, row.reference_value, row.test) == (
        0.877, "synthetic_control", "PBS", "wilcoxon signed-rank",
    )


def test_the_figures_are_pngs_and_a_q_of_zero_stays_finite(tmp_path) -> None:
    de = pd.read_parquet(grounded.write_de_table(tmp_path / "de.parquet", ["G0", "G1", "G2", "G3$x$"]).removeprefix("file://"))
    de.loc[0, "q_value"] = 0.0
    png = volcano_png(de, grounded.CONTEXTS[0], expected_up=["G0"], expected_down=["G1"])
    assert mpimg.imread(io.BytesIO(png), format="png").shape[2] in (3, 4)
    assert mpimg.imread(io.BytesIO(enrichment_bar_png(grounded.evaluation().enrichment)), format="png").ndim == 3
    assert neg_log10([0.0, 1.0, 0.01]).tolist() == pytest.approx([300.0, 0.0, 2.0])


def test_a_figure_is_laid_out_and_drawn_once_when_saved_and_its_png_is_unchanged() -> None:
    """``tight_layout`` leaves a placeholder layout engine, for which ``savefig`` draws the figure a
    second time (without rendering) before the drawing it writes; the report's figures skip that pass."""

    def bar_chart():
        fig, ax = headless_pyplot().subplots(figsize=(7.0, 4.0))
        ax.barh(range(15), range(15))
        ax.set_yticks(range(15), [f"regulation of a biological process, set {i}" for i in range(15)], fontsize=7)
        draws: list[object] = []
        fig.canvas.mpl_connect("draw_event", draws.append)
        return fig, draws

    fig, draws = bar_chart()
    saved = io.BytesIO()
    save_png(fig, saved)
    assert len(draws) == 1

    fig, draws = bar_chart()
    plain = io.BytesIO()
    fig.tight_layout()
    fig.savefig(plain, format="png", dpi=110)
    assert len(draws) == 2  # matplotlib's own way: two drawings
    assert saved.getvalue() == plain.getvalue()
