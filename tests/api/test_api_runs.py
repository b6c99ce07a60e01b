"""The API against a real Prefect server: triggering, reading, cancelling and retrying runs."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from prefect import get_client
from prefect.client.schemas.actions import ArtifactCreate

from tests.api.conftest import ApiServer


def test_post_runs_creates_a_scheduled_run_of_the_deployment(api: httpx.Client, api_server: ApiServer) -> None:
    body = api_server.request_body(question="Which genes move in B cells next to monocytes?")
    r = api.post("/runs", json=body)
    assert r.status_code == 202, r.text
    run = r.json()
    assert run["deployment_id"] == api_server.deployment_id
    assert run["state"]["type"] == "SCHEDULED"
    assert run["ui_url"].endswith(f"/runs/flow-run/{run['id']}")

    again = api.get(f"/runs/{run['id']}")
    assert again.status_code == 200
    assert again.json()["id"] == run["id"]


def test_the_same_request_twice_is_the_same_run(api: httpx.Client, api_server: ApiServer) -> None:
    body = api_server.request_body(question="Same request, same run?")
    first = api.post("/runs", json=body).json()
    second = api.post("/runs", json=body).json()
    assert first["id"] == second["id"]


def test_an_idempotency_key_header_names_the_run(api: httpx.Client, api_server: ApiServer) -> None:
    body = api_server.request_body(question="Keyed runs")
    a = api.post("/runs", json=body, headers={"Idempotency-Key": "nightly-2026-11-22"}).json()
    b = api.post("/runs", json=body, headers={"Idempotency-Key": "nightly-2026-11-23"}).json()
    a_again = api.post("/runs", json=body, headers={"Idempotency-Key": "nightly-2026-11-22"}).json()
    assert a["id"] != b["id"]
    assert a_again["id"] == a["id"]
    assert a["idempotency_key"] == "nightly-2026-11-22"


@pytest.mark.parametrize(
    "field, uri",
    [
        ("prompt_uri", "file:///etc/passwd"),
        ("query_uri", "/etc/shadow"),
        ("query_uri", "relative/data.h5ad"),
        ("checkpoint_uri", "gs://someone-elses-bucket/model.ckpt"),
        ("gene_list_uri", "http://169.254.169.254/computeMetadata/v1/"),
    ],
)
def test_uris_outside_the_allowed_roots_are_refused(
    api: httpx.Client, api_server: ApiServer, field: str, uri: str
) -> None:
    r = api.post("/runs", json=api_server.request_body(**{field: uri}))
    assert r.status_code == 422
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", field]
    assert "STACKFLOWS_API__ALLOWED_URI_PREFIXES" in error["msg"] or "path" in error["msg"]


def test_path_traversal_out_of_the_data_dir_is_refused(api: httpx.Client, api_server: ApiServer) -> None:
    sneaky = (api_server.data_dir / "inputs").as_uri() + "/../../../../etc/passwd"
    r = api.post("/runs", json=api_server.request_body(documents=[sneaky]))
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "documents", "0"]


def test_an_invalid_request_gets_422_naming_the_field(api: httpx.Client, api_server: ApiServer) -> None:
    r = api.post("/runs", json=api_server.request_body() | {"num_steps": 0})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "num_steps"]
    r = api.post("/runs", json=api_server.request_body() | {"typo_field": 1})
    assert r.status_code == 422


def test_a_body_over_the_limit_gets_413(api: httpx.Client, api_server: ApiServer) -> None:
    body = api_server.request_body(question="x" * 4000, documents=["x" * 200] * 100)
    r = api.post("/runs", json=body)
    assert r.status_code == 413
    assert "URIs" in r.json()["detail"]


def test_unknown_run_is_404_and_bad_id_is_422(api: httpx.Client) -> None:
    r = api.get(f"/runs/{uuid.uuid4()}")
    assert r.status_code == 404
    assert "no flow run" in r.json()["detail"]
    assert api.get("/runs/not-a-uuid").status_code == 422
    assert api.post(f"/runs/{uuid.uuid4()}/cancel").status_code == 404


def test_cancel_then_retry_follow_the_dashboard(api: httpx.Client, api_server: ApiServer) -> None:
    run = api.post("/runs", json=api_server.request_body(question="cancel me")).json()

    assert api.post(f"/runs/{run['id']}/retry").status_code == 409  # not finished: nothing to retry

    cancelled = api.post(f"/runs/{run['id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"]["type"] == "CANCELLED"  # never started: cancelled at once
    again = api.post(f"/runs/{run['id']}/cancel")
    assert again.status_code == 409
    assert "nothing to cancel" in again.json()["detail"]

    retried = api.post(f"/runs/{run['id']}/retry")
    assert retried.status_code == 200, retried.text
    assert retried.json()["state"]["type"] == "SCHEDULED"
    assert retried.json()["state"]["name"] == "AwaitingRetry"


def test_get_run_shows_progress_and_report_links(api: httpx.Client, api_server: ApiServer) -> None:
    run = api.post("/runs", json=api_server.request_body(question="show my artifacts")).json()

    async def write_artifacts() -> None:  # what the flow's tasks write while it runs
        async with get_client() as client:
            for artifact in (
                ArtifactCreate(flow_run_id=run["id"], type="progress", key="stack-job", data=42.5),
                ArtifactCreate(flow_run_id=run["id"], type="markdown", key="analysis-report", data="# Report"),
                # create_link_artifact writes a markdown artifact that is one link
                ArtifactCreate(
                    flow_run_id=run["id"], type="markdown", key="report-html", data="[report](file:///r/report.html)"
                ),
            ):
                await client.create_artifact(artifact)

    asyncio.run(write_artifacts())
    shown = api.get(f"/runs/{run['id']}").json()
    assert shown["progress"] and shown["progress"]["percent"] == 42.5, shown
    by_key = {a["key"]: a for a in shown["artifacts"]}
    assert set(by_key) == {"analysis-report", "report-html"}
    assert by_key["report-html"]["link"] == "file:///r/report.html"
    assert by_key["analysis-report"]["link"] is None  # a report is not a link
    assert by_key["analysis-report"]["ui_url"].endswith(by_key["analysis-report"]["id"])


def test_healthz_needs_no_token_and_reports_prefect(api_server: ApiServer) -> None:
    with api_server.client(token=None) as anonymous:
        r = anonymous.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "prefect_api": "ok"}
