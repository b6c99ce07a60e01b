"""Which data a request may name: only URIs under configured roots reach a worker's reads.

Workers read what a request names with their own file system and credentials, so a run naming
``file:///etc/shadow`` or ``gs://someone-elses-bucket`` must be refused before anything is read. The
API refuses such a request before a run exists; the flow refuses it again as its first step, because
the Prefect UI and Prefect's own API create runs with no stackflows API in between. Both use this
module, so the rule is the same on both sides.

Local paths are resolved (``..`` and symlinks included) before they are compared; other schemes are
compared as strings, at a ``/`` boundary, after refusing ``.``/``..`` segments.

    roots = allowed_roots(get_settings())
    refused_uris([("query_uri", "file:///etc/passwd")], roots)   # [("query_uri", "... outside ...")]
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote, urlparse

if TYPE_CHECKING:
    from clients.settings import Settings

SETTING = "STACKFLOWS_API__ALLOWED_URI_PREFIXES"


class UriNotAllowed(ValueError):
    """A URI that can never be allowed (relative path, remote file:// host); the message says why."""


class NamesUris(Protocol):
    """What a request looks like to this module: the fields that name data (an ``AnalysisRequest``)."""

    prompt_uri: str
    query_uri: str
    gene_list_uri: str | None
    checkpoint_uri: str | None
    documents: list[str]
    gene_set_uris: list[str]


def default_roots(data_dir: Path, storage_root: str) -> list[str]:
    """The data directory and the storage root: where the embedded defaults keep inputs and outputs."""
    return [data_dir.resolve().as_uri(), storage_root]


def allowed_roots(settings: Settings) -> list[str]:
    """``STACKFLOWS_API__ALLOWED_URI_PREFIXES``, else the data directory and the storage root."""
    return settings.api.allowed_uri_prefixes or default_roots(settings.data_dir, settings.storage_root)


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


def is_allowed(uri: str, roots: Iterable[str]) -> bool:
    """True when ``uri`` lies under one of ``roots``; raises UriNotAllowed for URIs never allowed."""
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


def request_uris(request: NamesUris) -> list[tuple[str, str]]:
    """(field, uri) for every URI a request names, documents as ``documents.<i>``."""
    named = [
        ("prompt_uri", request.prompt_uri),
        ("query_uri", request.query_uri),
        ("gene_list_uri", request.gene_list_uri),
        ("checkpoint_uri", request.checkpoint_uri),
    ]
    named += [(f"documents.{i}", doc) for i, doc in enumerate(request.documents)]
    named += [(f"gene_set_uris.{i}", gmt) for i, gmt in enumerate(request.gene_set_uris)]
    return [(field, uri) for field, uri in named if uri is not None]


def refused_uris(named: Iterable[tuple[str, str]], roots: list[str]) -> list[tuple[str, str]]:
    """(field, reason) for each (field, uri) outside ``roots``; empty when all are allowed."""
    refused = []
    for field, uri in named:
        try:
            ok = is_allowed(uri, roots)
            reason = (
                f"'{uri}' is outside the allowed roots {roots}; put the data under one of them "
                f"or add its prefix to {SETTING}"
            )
        except UriNotAllowed as e:
            ok, reason = False, str(e)
        if not ok:
            refused.append((field, reason))
    return refused
