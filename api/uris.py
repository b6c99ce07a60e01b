"""Which data a request may name: only URIs under configured roots reach a worker.

The API runs with the workers' file system and credentials behind it, so a request that names
``file:///etc/shadow`` or ``gs://someone-elses-bucket`` must be refused here, before a run exists.
Local paths are resolved (``..`` and symlinks included) before they are compared; other schemes are
compared as strings after refusing ``.``/``..`` segments.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlparse

from flows.models import AnalysisRequest


class UriNotAllowed(ValueError):
    """A request names a URI outside the allowed roots; the message says which and how to fix it."""


def default_roots(data_dir: Path, storage_root: str) -> list[str]:
    """The data directory and the storage root: where the embedded defaults keep inputs and outputs."""
    return [data_dir.resolve().as_uri(), storage_root]


def _local_path(uri: str) -> Path | None:
    """The resolved local path a ``file://`` URI or absolute path names; None for other schemes."""
    if uri.startswith("file://"):
        parsed = urlparse(uri)
        if parsed.netloc not in ("", "localhost"):
            raise UriNotAllowed(f"'{uri}' names a remote host; file:// URIs must be file:///absolute/path")
        raw = unquote(parsed.path)
    elif "://" in uri:
        return None
    else:
        raw = os.path.expanduser(uri)
        if not os.path.isabs(raw):
            raise UriNotAllowed(
                f"'{uri}' is a relative path; workers resolve it elsewhere. Give file:///absolute/path"
            )
    return Path(raw).resolve()


def _has_dot_segments(uri: str) -> bool:
    path = unquote(uri.split("://", 1)[1])
    return any(part in (".", "..") for part in path.replace("\\", "/").split("/"))


def is_allowed(uri: str, roots: list[str]) -> bool:
    if "\x00" in uri:
        return False
    path = _local_path(uri)
    for root in roots:
        root_path = _local_path(root)
        if path is not None and root_path is not None:
            if path == root_path or path.is_relative_to(root_path):
                return True
        elif path is None and root_path is None and not _has_dot_segments(uri):
            prefix = root.rstrip("/")
            if uri == prefix or uri.startswith(prefix + "/"):
                return True
    return False


def request_uris(request: AnalysisRequest) -> list[tuple[str, str]]:
    """(field, uri) for every URI a request names, documents as ``documents.<i>``."""
    named = [
        ("prompt_uri", request.prompt_uri),
        ("query_uri", request.query_uri),
        ("gene_list_uri", request.gene_list_uri),
        ("checkpoint_uri", request.checkpoint_uri),
    ]
    named += [(f"documents.{i}", doc) for i, doc in enumerate(request.documents)]
    return [(field, uri) for field, uri in named if uri is not None]


def refused_uris(request: AnalysisRequest, roots: list[str]) -> list[tuple[str, str]]:
    """(field, reason) for each URI of ``request`` outside ``roots``; empty when all are allowed."""
    refused = []
    for field, uri in request_uris(request):
        try:
            ok = is_allowed(uri, roots)
            reason = (
                f"'{uri}' is outside the allowed roots {roots}; put the data under one of them "
                "or add its prefix to STACKFLOWS_API__ALLOWED_URI_PREFIXES"
            )
        except UriNotAllowed as e:
            ok, reason = False, str(e)
        if not ok:
            refused.append((field, reason))
    return refused
