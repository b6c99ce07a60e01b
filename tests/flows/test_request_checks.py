"""The allowed roots hold inside the flow: a run created without our API (the Prefect UI, Prefect's own
API) that names data outside them fails at its first step, before any file is opened."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from clients.settings import Settings, get_settings
from flows.analysis_run import analysis_run
from tasks.request import AnalysisRequest
from tasks.validation import InputValidationError, validate_h5ad
from tasks.request_checks import check_request_uris


@pytest.fixture(scope="module")
def outside_h5ad(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid counts h5ad (pbmc68k as counts) in a directory that is no allowed root."""
    from deployments.demo_data import prepare_demo_data

    return prepare_demo_data(tmp_path_factory.mktemp("elsewhere")).h5ad


def run_flow(request: AnalysisRequest, settings: Settings):
    flow = analysis_run.with_options(result_storage=settings.data_dir / "prefect-results")
    return flow(request, return_state=True)


def task_names_of(flow_run_id) -> set[str]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name.rsplit("-", 1)[0] for r in runs}


def test_a_run_naming_a_file_outside_the_roots_fails_before_reading_it(
    prefect_api: None, settings: Settings, outside_h5ad: Path
) -> None:
    validate_h5ad(outside_h5ad, required_obs={"bulk_labels": None})  # the file itself is fine
    inside = settings.data_dir / "inputs" / "cells.h5ad"
    inside.parent.mkdir(parents=True)
    inside.write_bytes(b"")  # allowed, but never reached: the run stops at the query
    request = AnalysisRequest(question="Monocytes among B cells?", prompt_uri=inside.as_uri(), query_uri=str(outside_h5ad))

    state = run_flow(request, settings)

    assert state.is_failed()
    with pytest.raises(InputValidationError) as raised:
        state.result()
    error = raised.value
    assert error.path == "request.query_uri"
    assert str(outside_h5ad) in error.problem and "STACKFLOWS_API__ALLOWED_URI_PREFIXES" in error.fix
    # Only the check ran: no model files resolved, no input validated or staged, nothing written.
    assert task_names_of(state.state_details.flow_run_id) == {"check-request-uris"}
    assert not (settings.data_dir / "objects").exists()


@pytest.mark.parametrize(
    "field, uri",
    [
        ("prompt_uri", "/etc/passwd"),
        ("gene_list_uri", "file:///etc/passwd"),
        ("checkpoint_uri", "gs://someone-elses-bucket/model.ckpt"),
        ("query_uri", "relative/cells.h5ad"),
    ],
)
def test_every_field_naming_data_is_checked(settings: Settings, field: str, uri: str) -> None:
    allowed = (settings.data_dir / "inputs" / "cells.h5ad").as_uri()
    request = AnalysisRequest.model_validate(
        {"question": "Which roots?", "prompt_uri": allowed, "query_uri": allowed, field: uri}
    )
    with pytest.raises(InputValidationError, match=f"request.{field}"):
        check_request_uris.fn(request)


def test_a_document_outside_the_roots_is_named_by_its_index(settings: Settings) -> None:
    allowed = (settings.data_dir / "inputs" / "cells.h5ad").as_uri()
    sneaky = (settings.data_dir / "docs").as_uri() + "/../../../etc/passwd"
    request = AnalysisRequest(question="Docs?", prompt_uri=allowed, query_uri=allowed, documents=[allowed, sneaky])
    with pytest.raises(InputValidationError) as raised:
        check_request_uris.fn(request)
    assert raised.value.path == "request.documents.1"


def test_the_workers_allowed_prefixes_widen_the_roots(
    settings: Settings, outside_h5ad: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    request = AnalysisRequest(question="Elsewhere, allowed", prompt_uri=str(outside_h5ad), query_uri=str(outside_h5ad))
    with pytest.raises(InputValidationError):
        check_request_uris.fn(request)
    monkeypatch.setenv("STACKFLOWS_API__ALLOWED_URI_PREFIXES", f'["{outside_h5ad.parent.as_uri()}"]')
    get_settings.cache_clear()
    check_request_uris.fn(request)  # no error
