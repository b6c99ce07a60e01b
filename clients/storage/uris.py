"""Small helpers for the URIs stores understand: ``file:///abs/path``, plain local paths, ``gs://bucket/key``."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse


def scheme_of(uri: str) -> str:
    """``gs`` or ``file``; a plain local path (no scheme) counts as ``file``."""
    if "://" not in uri:
        return "file"
    return uri.split("://", 1)[0].lower()


def local_path_of(uri: str) -> Path:
    """The absolute local path a ``file://`` URI or a plain path names."""
    if uri.startswith("file://"):
        parsed = urlparse(uri)
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"{uri}: file:// URIs must name a local path (file:///abs/path)")
        return Path(unquote(parsed.path))
    if "://" in uri:
        raise ValueError(f"{uri}: not a local path or file:// URI")
    return Path(uri).expanduser().resolve()


def split_gs_uri(uri: str) -> tuple[str, str]:
    """``gs://bucket/a/b`` -> ``("bucket", "a/b")``."""
    if not uri.startswith("gs://"):
        raise ValueError(f"{uri}: not a gs:// URI")
    bucket, _, key = uri[len("gs://") :].partition("/")
    if not bucket:
        raise ValueError(f"{uri}: gs:// URI without a bucket name")
    return bucket, key


def join_uri(root: str, *parts: str) -> str:
    """``root`` with ``parts`` appended, one ``/`` between each."""
    pieces = [root.rstrip("/")] + [p.strip("/") for p in parts if p.strip("/")]
    return "/".join(pieces)
