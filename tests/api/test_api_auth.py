"""Without the right bearer token nothing but /healthz answers; without its settings the API does not start."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from prefect import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.settings import PREFECT_API_URL, temporary_settings

from api.app import ApiMisconfigured, create_app
from api.settings import ApiSettings
from clients.settings import Settings
from tests.api.conftest import ApiServer

RUN = str(uuid.uuid4())
PROTECTED = [("POST", "/runs"), ("GET", f"/runs/{RUN}"), ("POST", f"/runs/{RUN}/cancel"), ("POST", f"/runs/{RUN}/retry")]


@pytest.mark.parametrize("method, path", PROTECTED)
def test_no_token_is_401_with_a_bearer_challenge(api_server: ApiServer, method: str, path: str) -> None:
    with api_server.client(token=None) as client:
        r = client.request(method, path, json=api_server.request_body())
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert "STACKFLOWS_API__TOKEN" in r.json()["detail"]


@pytest.mark.parametrize("method, path", PROTECTED)
def test_a_wrong_token_is_403(api_server: ApiServer, method: str, path: str) -> None:
    with api_server.client(token="test-token-5c1f") as client:
        r = client.request(method, path, json=api_server.request_body())
    assert r.status_code == 403
    assert r.json() == {"detail": "invalid bearer token"}


def test_a_refused_call_creates_no_run(api_server: ApiServer) -> None:
    async def count_runs() -> int:
        async with get_client() as client:
            return await client.count_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[api_server.deployment_id]))
            )

    before = asyncio.run(count_runs())
    with api_server.client(token="wrong") as client:
        assert client.post("/runs", json=api_server.request_body(question="sneaky run")).status_code == 403
    assert asyncio.run(count_runs()) == before


def test_the_api_does_not_start_without_a_token(tmp_path) -> None:
    with pytest.raises(ApiMisconfigured, match="STACKFLOWS_API__TOKEN"):
        create_app(Settings(data_dir=tmp_path, api=ApiSettings(token=None)))


def test_the_api_does_not_start_without_a_prefect_api_url(tmp_path) -> None:
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        with pytest.raises(ApiMisconfigured, match="PREFECT_API_URL"):
            create_app(Settings(data_dir=tmp_path, api=ApiSettings(token="t")))
