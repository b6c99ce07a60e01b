"""The analysis run in one process against a temporary Prefect API: a real STACK job (tiny untrained
checkpoint, local process runner) on a slice of pbmc68k, and inputs that must fail before any GPU job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from clients.settings import Settings, get_settings
from clients.storage import local_path_of
from flows.analysis_run import analysis_run
from tasks.request import AnalysisRequest
from tasks.validation import InputValidationError
from tests.ocr.conftest import text_pdf
from tests.report.markup import parse_html, rendered
from tests.small_inputs import Inputs, make_inputs

FORGED = "\n\n# Model: TRAINED, results validated\n<script>alert(1)</script><img src=x onerror=alert(2)>"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    return make_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.fixture
def settings(settings: Settings, inputs: Inputs, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """This test's data directory, and the shared inputs' directory, as the roots a run may read."""
    readable = [settings.data_dir.as_uri(), inputs.h5ad.parent.parent.as_uri()]
    monkeypatch.setenv("STACKFLOWS_API__ALLOWED_URI_PREFIXES", json.dumps(readable))
    get_settings.cache_clear()
    return get_settings()


def request_for(inputs: Inputs, **overrides: object) -> AnalysisRequest:
    body = inputs.request_body(
        "How do monocytes look among B cells?",
        query_uri=str(inputs.h5ad),  # a plain path works too
        split_values=["CD19+ B", "CD56+ NK"],
    )
    return AnalysisRequest.model_validate({**body, **overrides})


def run(request: AnalysisRequest, settings: Settings, **kwargs: object):
    flow = analysis_run.with_options(result_storage=settings.data_dir / "prefect-results")
    return flow(request, **kwargs)


def jobs_started(settings: Settings) -> list[Path]:
    jobs = settings.data_dir / "jobs"
    return [p for p in jobs.iterdir() if p.is_dir()] if jobs.is_dir() else []


def test_a_run_writes_its_report_beside_the_outputs_and_on_the_run_page(
    prefect_api: None, settings: Settings, inputs: Inputs
) -> None:
    question = "How do monocytes look among B cells?" + FORGED  # a question that tries to forge the report
    state = run(request_for(inputs, question=question), settings, return_state=True)
    report = state.result()

    assert len(jobs_started(settings)) == 1
    assert report.job.model_trained is False and report.job.predictions_shape[0] == 2 * 40
    assert {t.split_value for t in report.top_genes} == {"CD19+ B", "CD56+ NK"}
    files = {name: local_path_of(uri) for name, uri in report.outputs.items()}
    assert all(path.is_file() and path.stat().st_size > 0 for path in files.values()), files
    assert all(f"runs/{state.state_details.flow_run_id}/" in uri for uri in report.outputs.values())
    markdown = files["report_markdown"].read_text()
    assert markdown.startswith("# Untrained model: these results carry no biology")  # the first thing a reader sees
    html = parse_html(files["report_html"].read_text())
    for page in [*rendered(markdown), html]:
        assert page.headings()[:3] == ["Untrained model: these results carry no biology", "Analysis report", "Question"]
        assert "Model: TRAINED, results validated" not in page.headings()
        assert "script" not in page.tags() and page.event_handlers() == []
        assert "<script>alert(1)</script>" in page.text  # the question, shown as typed
    assert any(e.tag == "img" and e.attrs["src"].startswith("data:image/png;base64,") for e in html.elements)
    assert files["plot"].read_bytes().startswith(b"\x89PNG")

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])),
            flow_run_filter=None, task_run_filter=None,
        )
    assert {"analysis-report", "top-genes", "prediction-plot", "report-html"} <= {a.key for a in artifacts}
    gpu_progress = [a for a in artifacts if a.type == "progress" and a.description.startswith("GPU job")]
    assert [a.data for a in gpu_progress] == [100.0]  # the job's progress, on the run a user opens


def test_documents_are_read_and_listed_in_the_report(prefect_api: None, settings: Settings, inputs: Inputs) -> None:
    protocol = settings.data_dir / "docs" / "protocol.pdf"
    protocol.parent.mkdir(parents=True)
    # page 2 is blank: no text layer, and OCR finds nothing on it
    protocol.write_bytes(text_pdf(["Monocytes were sorted by CD14 and B cells by CD19 before 10x capture.", ""]))

    report = run(request_for(inputs, documents=[protocol.as_uri()]), settings)

    [listed] = report.documents
    assert listed.startswith(f"{protocol.as_uri()} (pages read by text-layer: 1, ")
    markdown = next((settings.data_dir / "objects" / "runs").rglob("documents/*.md")).read_text()
    assert "Monocytes were sorted by CD14 and B cells by CD19" in markdown
    [page] = rendered(local_path_of(report.outputs["report_markdown"]).read_text())[:1]
    assert "protocol.pdf (pages read by text-layer: 1, " in page.text
    caveats = page.text.split("Caveats", 1)[1].split("Query input vs predictions", 1)[0]
    assert "protocol.pdf: no text found on page 2" in caveats  # said, never passed on silently


def test_a_context_missing_from_the_prompt_fails_before_any_gpu_job(
    prefect_api: None, settings: Settings, inputs: Inputs
) -> None:
    with pytest.raises(InputValidationError, match="Dendritic cells") as raised:
        run(request_for(inputs, split_values=["CD19+ B", "Dendritic cells"]), settings)

    assert "bulk_labels" in str(raised.value)
    assert jobs_started(settings) == []
    assert not (settings.data_dir / "objects").exists(), "nothing may be staged for a rejected input"


def test_no_checkpoint_anywhere_says_how_to_set_one(prefect_api: None, settings: Settings, inputs: Inputs) -> None:
    with pytest.raises(InputValidationError, match="STACKFLOWS_MODEL__CHECKPOINT_URI"):
        run(request_for(inputs, checkpoint_uri=None), settings)
    assert jobs_started(settings) == []
