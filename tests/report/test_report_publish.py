"""publish_report against a temporary Prefect API, with everything a user, the data or a model wrote
made hostile: the files and artifacts it writes must show that text as text, with the untrained
model's warning first, no markup that runs, no control characters, and links a browser opens."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from prefect import flow
from prefect.context import FlowRunContext

from clients.ocr.models import DocumentText, PageText
from clients.output_links import verify
from clients.settings import Settings, get_settings
from clients.storage import join_uri, local_path_of
from tasks.agent.plan import Findings, RunPlan
from tasks.prediction_plot import gene_means_table
from tasks.report import AnalysisReport, JobFigures, TopGene, document_caveats, document_line, publish_report
from tests.report.hostile import FORGED_FINDINGS, FORGED_QUESTION
from tests.report.markup import assert_inert, parse_html, rendered
from tests.report.run_page import run_artifacts

HOSTILE_VALUE = "<img src=x onerror=alert(9)> # B"  # an obs value: a context and a filter value
HOSTILE_GENE = "<b>GENE</b>_1"
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
OUR_HEADINGS = [
    "Untrained model: these results carry no biology",
    "Analysis report",
    "Question",
    "Differential expression",  # the top genes the summary carries, even without a grounding
    f"Context: {HOSTILE_VALUE}",
    "Plan",
    "GPU job",
    "Findings (model claude-test)",
    "Caveats",
    "Query input vs predictions",
    "Agent cost",
    "Documents read",
    "Outputs",
]


@dataclass
class Published:
    report: AnalysisReport
    flow_run_id: UUID
    artifacts: dict[str, object]

    def file(self, name: str) -> str:
        return local_path_of(self.report.outputs[name]).read_text()


def hostile_inputs(directory: Path) -> tuple[str, str]:
    """The predictions a job would write for a query, under a hostile context name, and the job's
    gene means of both (computed here as the job computes them): URIs of the h5ad and the parquet."""
    genes = [f"G{i}" for i in range(8)]
    counts = np.random.default_rng(0).poisson(3.0, size=(6, len(genes))).astype(np.float32)
    cells = [f"cell{i}" for i in range(6)]
    query = ad.AnnData(X=counts, obs=pd.DataFrame(index=cells), var=pd.DataFrame(index=genes))
    predictions = ad.AnnData(
        X=counts[::-1].copy(),
        obs=pd.DataFrame({"query_cell": cells, "split_value": [HOSTILE_VALUE] * 6}, index=[f"p{i}" for i in range(6)]),
        var=pd.DataFrame(index=genes),
    )
    predictions.write_h5ad(directory / "predictions.h5ad")
    gene_means_table(query, predictions).to_parquet(directory / "gene_means.parquet", index=False)
    return (directory / "predictions.h5ad").as_uri(), (directory / "gene_means.parquet").as_uri()


def hostile_report(predictions_uri: str) -> AnalysisReport:
    scan = DocumentText(
        uri="file:///docs/scan.pdf",
        sha256="0" * 64,
        media_type="application/pdf",
        pages=[PageText(page_number=1, text="CD14 sorted", engine="rapidocr"), PageText(page_number=2, text=" \n", engine="rapidocr")],
    )
    return AnalysisReport(
        flow_run_id="0",
        question=FORGED_QUESTION,
        plan=RunPlan(
            split_column="bulk_labels`<script>alert(7)</script>",
            split_values=[HOSTILE_VALUE],
            prompt_obs_filter={"bulk_labels": [HOSTILE_VALUE]},
            query_obs_filter={"kind\n# Forged": ["q\x00"]},
            num_steps=2,
            rationale="Because\n\n# Model: TRAINED, results validated\n<script>alert(8)</script>",
            planned_by="model claude-test",
        ),
        job=JobFigures(
            job_id="stack-abc-a1", device="cpu", precision="fp32", model_trained=False, model_parameters=10,
            predictions_shape=(6, 8), num_steps=2, wall_seconds=1.0, gpu_seconds=0.0, peak_memory_mb=1.0,
        ),  # fmt: skip
        findings=Findings(
            markdown=FORGED_FINDINGS,
            caveats=[f"The plan asked for contexts the job did not produce: {HOSTILE_VALUE}\n# Forged caveat"],
            written_by="model claude-test",
            model_trained=False,
        ),
        top_genes=[TopGene(split_value=HOSTILE_VALUE, direction="up", gene=HOSTILE_GENE, log_fold_change=1.5)],
        documents=[document_line(scan)],
        caveats=document_caveats([scan]),
        outputs={"predictions": predictions_uri},
    )


def publish(settings: Settings, tmp_path: Path) -> Published:
    predictions_uri, gene_means_uri = hostile_inputs(tmp_path)

    @flow(name="publish-report-test")
    def run() -> tuple[AnalysisReport, UUID]:
        run_id = FlowRunContext.get().flow_run.id
        prefix = join_uri(settings.storage_root, "runs", str(run_id), "report")
        return publish_report(hostile_report(predictions_uri), prefix, gene_means_uri=gene_means_uri), run_id

    report, run_id = run()
    return Published(report, run_id, run_artifacts(run_id))


@pytest.fixture
def linked_settings(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A worker that knows the API's public URL and token, so it can sign output links."""
    monkeypatch.setenv("STACKFLOWS_API__PUBLIC_URL", "http://api.example.test:8080")
    monkeypatch.setenv("STACKFLOWS_API__TOKEN", "test-token-for-signing")
    get_settings.cache_clear()
    return get_settings()


def test_report_md_shows_hostile_text_as_text_under_the_warning(prefect_api: None, settings: Settings, tmp_path: Path) -> None:
    published = publish(settings, tmp_path)
    markdown = published.file("report_markdown")

    assert markdown.startswith("# Untrained model: these results carry no biology\n")
    for page in rendered(markdown):
        assert page.headings() == OUR_HEADINGS
        assert_inert(page)
        assert page.hrefs() == ["https://cellxgene.example/atlas"]  # the findings' one web link
        text = " ".join(page.text.split())
        assert "# Model: TRAINED, results validated" in text and "<script>alert(1)</script>" in text
        assert HOSTILE_VALUE in text and "scan.pdf: no text found on page 2" in text


def test_report_html_runs_nothing_and_embeds_the_plot(prefect_api: None, settings: Settings, tmp_path: Path) -> None:
    published = publish(settings, tmp_path)
    page = parse_html(published.file("report_html"))

    assert page.headings() == OUR_HEADINGS
    assert not page.tags() & {"script", "iframe", "object", "embed", "svg", "form"}
    assert page.event_handlers() == []
    assert all(href.startswith("https://") for href in page.hrefs())
    [image] = [e for e in page.elements if e.tag == "img"]
    assert image.attrs["src"].startswith("data:image/png;base64,")
    [csp] = [e for e in page.elements if e.tag == "meta" and e.attrs.get("http-equiv") == "Content-Security-Policy"]
    assert "default-src 'none'" in csp.attrs["content"] and "script-src" not in csp.attrs["content"]
    text = " ".join(page.text.split())
    assert "<script>alert(1)</script>" in text and "<img src=x onerror=alert(2)>" in text


def test_no_control_character_reaches_a_file_or_an_artifact(prefect_api: None, settings: Settings, tmp_path: Path) -> None:
    published = publish(settings, tmp_path)

    for name in ("report_markdown", "report_html", "report_json"):
        assert not CONTROL.search(published.file(name).replace("\n", "").replace("\t", "")), name
    assert "\\u0000" not in published.file("report_json")
    assert json.loads(published.file("report_json"))["plan"]["query_obs_filter"] == {"kind\n# Forged": ["q"]}
    for artifact in published.artifacts.values():
        data = artifact.data if isinstance(artifact.data, str) else json.dumps(artifact.data)
        assert not CONTROL.search((data + (artifact.description or "")).replace("\n", "")), artifact.key


def test_the_run_page_shows_the_report_escaped_and_links_outputs_a_browser_opens(
    prefect_api: None, linked_settings: Settings, tmp_path: Path
) -> None:
    published = publish(linked_settings, tmp_path)
    run = str(published.flow_run_id)
    report = published.artifacts["analysis-report"]

    for page in rendered(report.data):
        assert page.headings() == OUR_HEADINGS
        assert not page.tags() & {"script", "iframe", "object", "embed", "svg", "style"}
        assert page.event_handlers() == []
        [plot] = [e for e in page.elements if e.tag == "img"]
        assert plot.attrs["src"].startswith(f"http://api.example.test:8080/runs/{run}/files/report/predictions_vs_query.png?")
        links = [h for h in page.hrefs() if h.startswith("http://api.example.test")]
        assert {h.split("?")[0].rsplit("/", 1)[-1] for h in links} >= {"report.html", "report.md", "predictions_vs_query.png"}
    for page in rendered(report.description):
        assert page.tags() <= {"p"} and "<script>alert(1)</script>" in page.text and "UNTRAINED" in page.text

    for key, file in (("prediction-plot", "report/predictions_vs_query.png"), ("report-html", "report/report.html")):
        [url] = re.findall(r"\((http://[^)]+)\)", published.artifacts[key].data)
        query = dict(part.split("=") for part in url.split("?")[1].split("&"))
        assert url.startswith(f"http://api.example.test:8080/runs/{run}/files/{file}?")
        assert verify(run, file, int(query["exp"]), query["sig"]) is None  # the API opens exactly that file

    [row] = json.loads(published.artifacts["top-genes"].data)
    for cell in (row["split_value"], row["gene"]):
        for page in rendered(cell):  # the Prefect UI renders table cells as markdown
            assert page.tags() <= {"p"} and page.text.strip() in (HOSTILE_VALUE, HOSTILE_GENE)


def test_without_a_public_api_url_artifacts_name_the_storage_uri_as_text(
    prefect_api: None, settings: Settings, tmp_path: Path
) -> None:
    published = publish(settings, tmp_path)

    for key, name in (("prediction-plot", "plot"), ("report-html", "report_html")):
        for page in rendered(published.artifacts[key].data):
            assert page.hrefs() == []  # no file:// link a browser refuses
            assert published.report.outputs[name] in page.text and "STACKFLOWS_API__PUBLIC_URL" in page.text
