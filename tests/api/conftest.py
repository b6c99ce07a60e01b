"""One API server per test session, on 127.0.0.1, in front of the session's real Prefect server."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from api.app import create_app
from api.settings import ApiSettings
from clients.settings import Settings
from tasks.request import AnalysisRequest
from deployments.processes import free_port
from tests.api.schema_deployment import register_schema_deployment

TOKEN = "test-token-5c1e"
DEPLOYMENT = "analysis-run/api-test"


@dataclass
class ApiServer:
    url: str
    data_dir: Path
    deployment_id: str
    settings: Settings

    def client(self, token: str | None = TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def count_runs(self) -> int:
        """Flow runs of the test deployment, all states."""
        from prefect import get_client
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

        async def count() -> int:
            async with get_client() as client:
                return await client.count_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[self.deployment_id]))
                )

        return asyncio.run(count())

    def request_body(self, **overrides: object) -> dict:
        """A valid AnalysisRequest whose data lies under the allowed data directory."""
        h5ad = (self.data_dir / "inputs" / "pbmc.h5ad").as_uri()
        body = {"question": "How would B cells look among monocytes?", "prompt_uri": h5ad, "query_uri": h5ad}
        return AnalysisRequest.model_validate({**body, **overrides}).model_dump(mode="json", exclude_defaults=True)


@contextmanager
def serving(settings: Settings, port: int) -> Iterator[str]:
    """The app built from ``settings``, served by uvicorn on 127.0.0.1:``port`` in a thread."""
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    # The Prefect test harness keeps its API URL in a context variable: carry it into the server's thread.
    thread = threading.Thread(target=contextvars.copy_context().run, args=(server.run,), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the API server did not start within 30 s")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def api_server(prefect_api: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    data_dir = tmp_path_factory.mktemp("api-data")
    deployment_id = asyncio.run(register_schema_deployment(DEPLOYMENT))
    port = free_port()
    settings = Settings(
        data_dir=data_dir,
        api=ApiSettings(
            token=TOKEN, deployment=DEPLOYMENT, max_body_bytes=16 * 1024, public_url=f"http://127.0.0.1:{port}"
        ),
    )
    with serving(settings, port) as url:
        yield ApiServer(url=url, data_dir=data_dir, deployment_id=deployment_id, settings=settings)


@pytest.fixture
def api(api_server: ApiServer) -> Iterator[httpx.Client]:
    with api_server.client() as client:
        yield client
