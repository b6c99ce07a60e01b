"""The API against a real Prefect server: triggering, reading, cancelling and retrying runs."""

from __future__ import annotations

import asyncio
import json
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
    assert r.headers["Idempotent-Replayed"] == "false"
    run = r.json()
    assert run["deployment_id"] == api_server.deployment_id
    assert run["state"]["type"] == "SCHEDULED"
    assert run["ui_url"].endswith(f"/runs/flow-run/{run['id']}")

    again = api.get(f"/runs/{run['id']}")
    assert again.status_code == 200
    assert again.json()["id"] == run["id"]


def test_the_same_request_twice_is_the_same_run_and_says_it_is_a_replay(
    api: httpx.Client, api_server: ApiServer
) -> None:
    body = api_server.request_body(question="Same request, same run?")
    first = api.post("/runs", json=body)
    second = api.post("/runs", json=body)
    assert (first.status_code, first.headers["Idempotent-Replayed"]) == (202, "false")
    assert (second.status_code, second.headers["Idempotent-Replayed"]) == (200, "true")
    assert first.json()["id"] == second.json()["id"]


def test_an_idempotency_key_header_names_the_run(api: httpx.Client, api_server: ApiServer) -> None:
    body = api_server.request_body(question="Keyed runs")
    a = api.post("/runs", json=body, headers={"Idempotency-Key": "nightly-2026-11-22"}).json()
    b = api.post("/runs", json=body, headers={"Idempotency-Key": "nightly-2026-11-23"}).json()
    a_again = api.post("/runs", json=body, headers={"Idempotency-Key": "nightly-2026-11-22"})
    assert a["id"] != b["id"]
    assert a_again.json()["id"] == a["id"]
    assert (a_again.status_code, a_again.headers["Idempotent-Replayed"]) == (200, "true")
    assert a["idempotency_key"] == "nightly-2026-11-22"


def test_the_same_key_with_another_request_is_refused_naming_the_key(api: httpx.Client, api_server: ApiServer) -> None:
    key = {"Idempotency-Key": "weekly-2026-48"}
    first = api.post("/runs", json=api_server.request_body(question="Monocytes among B cells?"), headers=key)
    assert first.status_code == 202, first.text
    before = api_server.count_runs()

    other = api.post("/runs", json=api_server.request_body(question="Monocytes among NK cells?"), headers=key)

    assert other.status_code == 409, other.text
    assert "weekly-2026-48" in other.json()["detail"] and first.json()["id"] in other.json()["detail"]
    assert api_server.count_runs() == before


def test_an_input_fixed_in_place_is_a_new_request(api: httpx.Client, api_server: ApiServer) -> None:
    h5ad = api_server.data_dir / "inputs" / "fixed-in-place.h5ad"
    h5ad.parent.mkdir(parents=True, exist_ok=True)
    h5ad.write_bytes(b"the first, broken version")
    body = api_server.request_body(question="Does a fixed file run again?", prompt_uri=h5ad.as_uri(), query_uri=str(h5ad))
    first = api.post("/runs", json=body).json()
    assert api.post("/runs", json=body).json()["id"] == first["id"]  # nothing changed: a replay

    h5ad.write_bytes(b"the fixed version, in place")
    again = api.post("/runs", json=body)

    assert again.status_code == 202, again.text
    assert again.json()["id"] != first["id"]


def test_the_default_key_lives_one_window() -> None:
    from api.idempotency import default_keys

    window = 3600
    t = 1_800_000_000.0
    now, _ = default_keys("d1", t, window)
    assert default_keys("d1", t + 1, window)[0] == now  # a retry moments later: the same key
    assert default_keys("d1", t + window, window)[1] == now  # next window: still looked up (then by age)
    assert now not in default_keys("d1", t + 2 * window, window)  # two windows on: never again
    assert default_keys("d2", t, window)[0] != now


@pytest.mark.parametrize(
    "field, value",
    [
        ("seed", 2**70),
        ("seed", -1),
        ("num_steps", 2**70),
        ("documents", ["file:///x/doc.pdf"] * 21),
        ("split_values", [f"v{i}" for i in range(201)]),
        ("prompt_obs_filter", {f"c{i}": ["a"] for i in range(201)}),
        ("question", "q" * 4001),
    ],
)
def test_a_request_that_cannot_run_is_422_and_creates_no_run(
    api: httpx.Client, api_server: ApiServer, field: str, value: object
) -> None:
    before = api_server.count_runs()
    r = api.post("/runs", json=api_server.request_body() | {field: value})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][:2] == ["body", field]
    assert api_server.count_runs() == before


SURROGATE_QUESTION = b'{"question": "B cells \\ud800 among monocytes", "prompt_uri": "/d/a.h5ad", "query_uri": "/d/a.h5ad"}'
SURROGATE_KEY = b'{"question": "B cells among monocytes", "prompt_uri": "/d/a.h5ad", "query_uri": "/d/a.h5ad", "\\udfff": 1}'


def test_a_lone_surrogate_in_the_body_is_a_422_that_says_so(api: httpx.Client) -> None:
    r = api.post("/runs", content=SURROGATE_QUESTION, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]  # the answer is UTF-8 JSON: httpx decoded it
    assert error["loc"] == ["body", "question"]
    assert "lone UTF-16 surrogate" in error["msg"]
    assert error["input"] == "B cells \\ud800 among monocytes"  # echoed as printable text

    r = api.post("/runs", content=SURROGATE_KEY, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body"] and "lone UTF-16 surrogate" in error["msg"], error


def test_a_surrogate_pair_is_text_like_any_other(api: httpx.Client, api_server: ApiServer) -> None:
    body = api_server.request_body(question="How do B cells \U0001f9a0 look among monocytes?")
    raw = json.dumps(body).encode()  # ASCII JSON: the emoji as the pair \ud83e\udda0
    assert b"\\ud83e\\udda0" in raw
    r = api.post("/runs", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 202, r.text


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
    body = api_server.request_body(question="x" * 4000) | {"documents": ["x" * 200] * 100}
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
    report_html = f"{api_server.settings.storage_root}/runs/{run['id']}/report/report.html"

    async def write_artifacts() -> None:  # what the flow's tasks (and Prefect itself) write while it runs
        async with get_client() as client:
            for artifact in (
                ArtifactCreate(flow_run_id=run["id"], type="progress", key="stack-job", data=42.5),
                ArtifactCreate(flow_run_id=run["id"], type="markdown", key="analysis-report", data="# Report"),
                # create_link_artifact writes a markdown artifact that is one link
                ArtifactCreate(flow_run_id=run["id"], type="markdown", key="report-html", data=f"[report]({report_html})"),
                # the result records Prefect keeps for persisted results: no key, type "result" or none
                ArtifactCreate(flow_run_id=run["id"], type="result", data={"storage_key": "/r/1"}),
                ArtifactCreate(flow_run_id=run["id"], data={"storage_key": "/r/2", "serializer": {"type": "pickle"}}),
            ):
                await client.create_artifact(artifact)

    asyncio.run(write_artifacts())
    shown = api.get(f"/runs/{run['id']}").json()
    assert shown["progress"] and shown["progress"]["percent"] == 42.5, shown
    by_key = {a["key"]: a for a in shown["artifacts"]}
    assert set(by_key) == {"analysis-report", "report-html"}, shown["artifacts"]  # no result records
    assert by_key["report-html"]["link"] == report_html
    assert by_key["report-html"]["url"].startswith(f"{api_server.url}/runs/{run['id']}/files/report/report.html?exp=")
    assert by_key["analysis-report"]["link"] is None and by_key["analysis-report"]["url"] is None  # a report is not a link
    assert by_key["analysis-report"]["ui_url"].endswith(by_key["analysis-report"]["id"])


def test_healthz_needs_no_token_and_reports_prefect(api_server: ApiServer) -> None:
    with api_server.client(token=None) as anonymous:
        r = anonymous.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "prefect_api": "ok"}
