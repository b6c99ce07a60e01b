"""The HTTP front door: trigger analysis runs and follow them, through Prefect's API.

The app holds one Prefect client for its lifetime. It never runs flows itself: ``POST /runs``
creates a flow run of the configured deployment and returns at once; a worker runs it.

    STACKFLOWS_API__TOKEN=... PREFECT_API_URL=http://127.0.0.1:4200/api python -m api
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from typing import Annotated
from uuid import UUID

import httpx
from fastapi import Depends, FastAPI, Header, HTTPException, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from prefect.client.orchestration import PrefectClient, get_client
from prefect.exceptions import PrefectHTTPStatusError
from prefect.settings import get_current_settings

from api import files, idempotency, runs
from api.auth import require_token
from api.errors import request_validation_error
from api.limits import BodySizeLimit
from api.models import Health, RunView
from clients.settings import Settings, get_settings
from clients.storage.roots import allowed_roots, refused_uris, request_uris
from tasks.request import AnalysisRequest

REPLAYED = "Idempotent-Replayed"


class ApiMisconfigured(RuntimeError):
    """The API cannot start: a required setting is missing. The message names it."""


def _prefect_api_url() -> str:
    url = get_current_settings().api.url
    if not url:
        raise ApiMisconfigured(
            "PREFECT_API_URL is not set: point it at the Prefect server the workers use "
            "(e.g. http://127.0.0.1:4200/api). The API does not start a temporary server of its own "
            "(PREFECT_SERVER_EPHEMERAL_ENABLED=false)."
        )
    return url


def prefect_client(request: Request) -> PrefectClient:
    """The app's one Prefect client, opened in the lifespan."""
    return request.app.state.prefect


Client = Annotated[PrefectClient, Depends(prefect_client)]


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; fails at once (ApiMisconfigured) without a token or a Prefect API URL."""
    settings = settings or get_settings()
    if settings.api.token is None or not settings.api.token.get_secret_value():
        raise ApiMisconfigured("STACKFLOWS_API__TOKEN is not set: the API refuses to run without a bearer token")
    api_url = _prefect_api_url()
    ui_url = (settings.api.ui_url or get_current_settings().ui_url or api_url.removesuffix("/api")).rstrip("/")
    roots = allowed_roots(settings)
    window = settings.api.default_idempotency_window_s
    browser_url = files.browser_url(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with get_client() as client:
            app.state.prefect = client
            # Bounds the runs created at once (see ApiSettings.trigger_concurrency): a burst of
            # POST /runs queues here instead of colliding in the Prefect server's database.
            app.state.trigger_slots = asyncio.Semaphore(settings.api.trigger_concurrency)
            yield

    # FastAPIOffline: /docs and /redoc load Swagger UI and ReDoc from files the app serves itself
    # (shipped in the fastapi-offline wheel), not from a CDN, so they work with no internet.
    app = FastAPIOffline(
        title="stackflows",
        version="0.1.0",
        summary="Trigger and follow single-cell analysis runs (STACK on GPUs) orchestrated by Prefect.",
        lifespan=lifespan,
    )
    app.state.token = settings.api.token.get_secret_value().encode()
    app.add_middleware(BodySizeLimit, max_bytes=settings.api.max_body_bytes)
    app.add_exception_handler(RequestValidationError, request_validation_error)
    app.include_router(files.router(settings))

    authed = [Depends(require_token)]
    common = {
        401: {"description": "No bearer token sent."},
        403: {"description": "Wrong bearer token."},
    }
    not_found = {404: {"description": "No flow run with that id."}}
    conflict = {409: {"description": "The run's state does not allow this."}}

    @app.exception_handler(runs.RunNotFound)
    async def _not_found(_: Request, exc: runs.RunNotFound) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    @app.exception_handler(runs.RunConflict)
    async def _conflict(_: Request, exc: runs.RunConflict) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": str(exc)})

    @app.exception_handler(runs.IdempotencyConflict)
    async def _key_conflict(_: Request, exc: runs.IdempotencyConflict) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": str(exc)})

    @app.exception_handler(runs.DeploymentNotFound)
    async def _no_deployment(_: Request, exc: runs.DeploymentNotFound) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": str(exc)})

    @app.exception_handler(httpx.TransportError)
    async def _prefect_down(_: Request, exc: httpx.TransportError) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": f"Prefect API at {api_url} unreachable: {exc}"})

    @app.exception_handler(PrefectHTTPStatusError)
    async def _prefect_refused(_: Request, exc: PrefectHTTPStatusError) -> JSONResponse:
        """Prefect's answer after its client's own retries: busy (429/503) is ours to pass on as 503 with
        a Retry-After; anything else is an upstream failure (502), not a bug in this API (500)."""
        code = exc.response.status_code
        if code in (429, 503):
            return JSONResponse(
                status_code=503,
                content={"detail": f"Prefect API at {api_url} is busy ({code}) after retries; try again shortly"},
                headers={"Retry-After": exc.response.headers.get("Retry-After", "5")},
            )
        return JSONResponse(status_code=502, content={"detail": f"Prefect API at {api_url} answered {code}"})

    @app.post(
        "/runs",
        status_code=status.HTTP_202_ACCEPTED,
        response_model=RunView,
        dependencies=authed,
        responses={
            **common,
            200: {"model": RunView, "description": f"A replay: the key names a run of this request ({REPLAYED}: true)."},
            202: {"description": f"A new run was created ({REPLAYED}: false)."},
            409: {"description": "The Idempotency-Key already names a run of a different request."},
            422: {"description": "Invalid request, or a URI outside the allowed roots."},
            503: {"description": "Prefect API unreachable or busy; retry after Retry-After seconds."},
        },
    )
    async def create_run(
        body: AnalysisRequest,
        client: Client,
        request: Request,
        response: Response,
        idempotency_key: Annotated[
            str | None,
            Header(
                min_length=1,
                max_length=200,
                description=(
                    "Same key, same request: the same run (200, a replay). Same key, another request: 409. "
                    "Default: a hash of the request and its inputs' identity, honoured for "
                    "STACKFLOWS_API__DEFAULT_IDEMPOTENCY_WINDOW_S."
                ),
            ),
        ] = None,
    ) -> RunView:
        """Start an analysis run. Returns at once with the run's id, state and UI link."""
        refused = refused_uris(request_uris(body), roots)
        if refused:
            raise HTTPException(
                status_code=422,
                detail=[{"loc": ["body", *f.split(".")], "msg": msg, "type": "uri_not_allowed"} for f, msg in refused],
            )
        deployment = await runs.deployment_of(client, settings.api.deployment)
        triggered = None
        key = idempotency_key
        if key is None:
            digest = await asyncio.to_thread(idempotency.request_digest, body)  # reads the inputs' metadata
            key, previous = idempotency.default_keys(digest, time.time(), window)
            now = datetime.now(timezone.utc)
            found = await runs.recent_run_with_key(client, deployment, [key, previous], timedelta(seconds=window), now)
            triggered = runs.Triggered(found, replayed=True) if found else None
        if triggered is None:
            try:
                async with request.app.state.trigger_slots:
                    triggered = await runs.trigger(client, deployment, body, key)
            except PrefectHTTPStatusError as e:
                if e.response.status_code in (409, 422):
                    raise HTTPException(status_code=422, detail=f"Prefect refused the parameters: {e.response.text}")
                raise
        response.status_code = status.HTTP_200_OK if triggered.replayed else status.HTTP_202_ACCEPTED
        response.headers[REPLAYED] = "true" if triggered.replayed else "false"
        return runs.view(triggered.run, ui_url)

    @app.get("/runs/{run_id}", response_model=RunView, dependencies=authed, responses={**common, **not_found})
    async def read_run(run_id: UUID, client: Client) -> RunView:
        """State, progress (from the run's progress artifact) and links to the report artifacts."""
        run = await runs.read_run(client, run_id)
        return runs.view(run, ui_url, await runs.run_artifacts(client, run_id), browser_url)

    @app.post(
        "/runs/{run_id}/cancel",
        response_model=RunView,
        dependencies=authed,
        responses={**common, **not_found, **conflict},
    )
    async def cancel_run(run_id: UUID, client: Client) -> RunView:
        """Cancel the run; its GPU job is cancelled with it."""
        return runs.view(await runs.cancel(client, await runs.read_run(client, run_id)), ui_url)

    @app.post(
        "/runs/{run_id}/retry",
        response_model=RunView,
        dependencies=authed,
        responses={**common, **not_found, **conflict},
    )
    async def retry_run(run_id: UUID, client: Client) -> RunView:
        """Retry a finished run like the dashboard's Retry: finished steps (staging, the GPU job) are reused."""
        return runs.view(await runs.retry(client, await runs.read_run(client, run_id)), ui_url)

    @app.get("/healthz", response_model=Health, responses={503: {"description": "Prefect API unreachable."}})
    async def healthz(client: Client) -> Health | JSONResponse:
        """Liveness plus whether the Prefect API answers; needs no token."""
        error = await client.api_healthcheck()
        if error is not None:
            return JSONResponse(status_code=503, content={"status": "degraded", "prefect_api": str(error)})
        return Health(status="ok", prefect_api="ok")

    return app
