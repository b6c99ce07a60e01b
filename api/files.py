"""``GET /runs/{id}/files/{path}``: a run's outputs (report HTML, plot, predictions) for a browser.

The Prefect UI links a run's outputs here (``clients.output_links.output_url``), because a browser
opens neither ``file://`` nor ``gs://``. A browser cannot send the bearer token, so a link carries
a signature for that one file until it expires; the token is accepted too. Only objects under
``<storage root>/runs/<id>/`` are served: ``..``, symlinks out of the run and other runs are not.

What a run wrote may hold text a user or a model supplied, so nothing served may run script or be
sniffed into something else: a Content-Security-Policy without scripts, and ``nosniff``.
"""

from __future__ import annotations

import asyncio
import mimetypes
import shutil
import tempfile
from pathlib import Path
from typing import Annotated
from urllib.parse import unquote, urlsplit
from uuid import UUID

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import FileResponse
from fastapi.security import HTTPAuthorizationCredentials
from starlette.background import BackgroundTask

from api.auth import bearer, check_token
from clients import output_links
from clients.settings import Settings
from clients.storage import ObjectNotFoundError, join_uri, store_for

# No script, no plugin, no form, no framing; images and styles only from here (or inline, for the
# report's own CSS and embedded plots). 'sandbox' also gives the page an origin of its own, so even
# a script that somehow ran could not call this API with the browser's credentials. (Chromium still
# loads 'self' and data: images in a sandboxed page.)
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'; sandbox"
)
_TYPES = {
    ".md": "text/markdown",
    ".h5ad": "application/x-hdf5",
    ".json": "application/json",
    ".tsv": "text/tab-separated-values",
    ".csv": "text/csv",
    ".log": "text/plain",
}
_INLINE = ("text/", "image/png", "image/jpeg", "image/gif", "image/webp", "application/json", "application/pdf")


def content_type_of(path: str) -> str:
    suffix = Path(path).suffix.lower()
    return _TYPES.get(suffix) or mimetypes.guess_type(path)[0] or "application/octet-stream"


def _headers(path: str, media_type: str) -> dict[str, str]:
    disposition = "inline" if media_type.startswith(_INLINE) and media_type != "image/svg+xml" else "attachment"
    name = Path(path).name.replace('"', "")
    return {
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",  # the link's signature stays out of other sites' logs
        "Cache-Control": "private, max-age=300",
        "Content-Disposition": f'{disposition}; filename="{name}"',
    }


def browser_url(settings: Settings):
    """A function: an artifact's link -> a freshly signed URL for it, when it names a run output."""

    def fresh(link: str) -> str | None:
        base = (settings.api.public_url or "").rstrip("/")
        if base and link.startswith(base + "/runs/"):
            parts = unquote(urlsplit(link).path[len(urlsplit(base).path) :]).split("/", 4)
            if len(parts) == 5 and parts[3] == "files":  # ["", "runs", id, "files", rel]
                link = join_uri(settings.storage_root, "runs", parts[2], parts[4])
        return output_links.output_url(link, settings=settings)

    return fresh


def _authorize(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None,
    run_id: str,
    rel_path: str,
    exp: int | None,
    sig: str | None,
    settings: Settings,
) -> None:
    if credentials is not None and credentials.credentials:
        check_token(request, credentials)
        return
    if exp is None or not sig:
        raise HTTPException(
            status_code=401,
            detail="send 'Authorization: Bearer <token>', or open a signed link (?exp=...&sig=...) from the run's artifacts",
            headers={"WWW-Authenticate": "Bearer"},
        )
    refused = output_links.verify(run_id, rel_path, exp, sig, settings=settings)
    if refused:
        raise HTTPException(status_code=403, detail=refused)


def router(settings: Settings) -> APIRouter:
    """The route, serving from ``settings.storage_root`` (the workers' storage root)."""
    files = APIRouter()

    @files.get(
        "/runs/{run_id}/files/{path:path}",
        response_class=FileResponse,
        responses={
            200: {
                "description": "The file, with its content type.",
                "content": {"text/html": {}, "image/png": {}, "application/octet-stream": {}},
            },
            400: {"description": "A path that is not inside the run's outputs."},
            401: {"description": "Neither a bearer token nor a signed link."},
            403: {"description": "Wrong token, or a link whose signature does not match or has expired."},
            404: {"description": "No such output of this run."},
            502: {"description": "The storage service failed to serve the object."},
        },
    )
    async def run_file(
        run_id: UUID,
        path: str,
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        exp: Annotated[int | None, Query(ge=0, le=2**63 - 1, description="Signed link: expiry, unix seconds.")] = None,
        sig: Annotated[str | None, Query(max_length=128, description="Signed link: HMAC-SHA256, hex.")] = None,
    ) -> FileResponse:
        """One output of a run (report, plot, predictions), by a signed link or with the bearer token."""
        if not output_links.safe_rel_path(path):
            raise HTTPException(status_code=400, detail=f"'{path}' is not a path inside the run's outputs")
        _authorize(request, credentials, str(run_id), path, exp, sig, settings)
        media_type = content_type_of(path)
        run_root = join_uri(settings.storage_root, "runs", str(run_id))
        uri = join_uri(run_root, path)
        store = store_for(uri)
        local = store.local_path(uri)
        if local is not None:
            resolved, run_dir = local.resolve(), store.local_path(run_root).resolve()
            if not resolved.is_relative_to(run_dir) or not resolved.is_file():
                raise HTTPException(status_code=404, detail=f"run {run_id} has no output '{path}'")
            return FileResponse(resolved, media_type=media_type, headers=_headers(path, media_type))
        # A remote store: download (checksum checked) to a temporary file, stream it, then remove it.
        tmp = Path(tempfile.mkdtemp(prefix="stackflows-output-"))
        try:
            local = await asyncio.to_thread(store.get_file, uri, tmp / "object")
        except ObjectNotFoundError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise HTTPException(status_code=404, detail=f"run {run_id} has no output '{path}'") from None
        except Exception as e:  # the store refused or failed: not a bug here, and not the caller's
            shutil.rmtree(tmp, ignore_errors=True)
            raise HTTPException(status_code=502, detail=f"storage could not serve {uri}: {e}") from e
        return FileResponse(
            local,
            media_type=media_type,
            headers=_headers(path, media_type),
            background=BackgroundTask(shutil.rmtree, tmp, ignore_errors=True),
        )

    return files

