"""Signed browser links to a run's outputs, served by the API's ``GET /runs/{id}/files/{path}``.

A link in the Prefect UI is followed by a browser, which cannot send our bearer token, and a
``file://`` or ``gs://`` URI is no link a browser opens. So the flow writes links to the API that
carry their own permission: an expiry and an HMAC-SHA256 over the run, the file and the expiry,
keyed by a key derived from ``STACKFLOWS_API__OUTPUT_LINK_SECRET`` or, unset, the API token. A link
opens one file of one run until it expires; it cannot be bent to another file or run. No Prefect
here: flow code and the API both import it.

    output_url("file:///data/objects/runs/6f0c.../report/report.html")
    # -> "https://api.example.org/runs/6f0c.../files/report/report.html?exp=1767225600&sig=..."
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from pathlib import PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode
from uuid import UUID

from clients.storage.uris import local_path_of, scheme_of

if TYPE_CHECKING:
    from clients.settings import Settings

_KEY_PURPOSE = b"stackflows output links v1"  # a signature is never a token, nor any other MAC of it


def _settings(settings: Settings | None) -> Settings:
    from clients.settings import get_settings

    return settings or get_settings()


def _key(settings: Settings) -> bytes | None:
    """The signing key: from ``output_link_secret`` when set (a worker then needs no API token), else the token."""
    secret = settings.api.output_link_secret or settings.api.token
    value = secret.get_secret_value() if secret else ""
    return hmac.new(value.encode(), _KEY_PURPOSE, hashlib.sha256).digest() if value else None


def signature(key: bytes, run_id: str, rel_path: str, expires: int) -> str:
    """Hex HMAC-SHA256 of one file of one run until ``expires`` (unix seconds)."""
    return hmac.new(key, f"{run_id}\n{rel_path}\n{expires}".encode(), hashlib.sha256).hexdigest()


def safe_rel_path(rel_path: str) -> bool:
    """A path inside a run's outputs: relative, with no empty, ``.`` or ``..`` segment, no NUL or backslash."""
    if not rel_path or "\x00" in rel_path or "\\" in rel_path or rel_path.startswith("/"):
        return False
    return all(part not in ("", ".", "..") for part in rel_path.split("/"))


def run_file_of(uri: str, storage_root: str) -> tuple[str, str] | None:
    """``(run id, path inside the run)`` for a URI under ``<storage root>/runs/<id>/``; else None."""
    if scheme_of(uri) != scheme_of(storage_root):
        return None
    if scheme_of(uri) == "file":
        uri_path, root_path = os.path.normpath(local_path_of(uri)), os.path.normpath(local_path_of(storage_root))
        inner = os.path.relpath(uri_path, root_path) if uri_path.startswith(root_path.rstrip("/") + "/") else None
    else:
        prefix = storage_root.rstrip("/") + "/"
        inner = uri[len(prefix) :] if uri.startswith(prefix) else None
    if inner is None:
        return None
    parts = PurePosixPath(inner).parts
    if len(parts) < 3 or parts[0] != "runs":
        return None
    try:
        run_id = str(UUID(parts[1]))
    except ValueError:
        return None
    rel_path = "/".join(parts[2:])
    return (run_id, rel_path) if safe_rel_path(rel_path) else None


def output_url(uri: str, *, settings: Settings | None = None, now: float | None = None) -> str | None:
    """A signed URL at which a browser can open ``uri`` (an object under ``<storage root>/runs/<id>/``).

    None when there is nothing to sign with or link to: no ``STACKFLOWS_API__PUBLIC_URL``, neither
    ``STACKFLOWS_API__OUTPUT_LINK_SECRET`` nor ``STACKFLOWS_API__TOKEN`` in this process, or a URI that
    is no run output.
    """
    settings = _settings(settings)
    key, base = _key(settings), settings.api.public_url
    found = run_file_of(uri, settings.storage_root)
    if key is None or not base or found is None:
        return None
    run_id, rel_path = found
    expires = int(now if now is not None else time.time()) + settings.api.output_link_ttl_s
    query = urlencode({"exp": expires, "sig": signature(key, run_id, rel_path, expires)})
    return f"{base.rstrip('/')}/runs/{run_id}/files/{quote(rel_path)}?{query}"


def verify(
    run_id: str, rel_path: str, expires: int, sig: str, *, settings: Settings | None = None, now: float | None = None
) -> str | None:
    """None when ``sig`` opens ``rel_path`` of ``run_id`` now; else why not, in words for the 403."""
    key = _key(_settings(settings))
    if key is None:
        return "this server has no token or output link secret to check link signatures with"
    if not hmac.compare_digest(signature(key, run_id, rel_path, expires).encode(), sig.encode()):
        return "the link's signature does not match this file; open the run's artifact link again"
    if expires < (now if now is not None else time.time()):
        return "the link has expired; GET /runs/{id} with the bearer token lists fresh links (artifacts[].url)"
    return None
