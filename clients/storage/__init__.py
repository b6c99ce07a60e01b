"""Object storage: ``file://`` under a data directory (local) and ``gs://`` (Google Cloud Storage).

``store_for(uri)`` returns the store that serves a URI's scheme::

    from clients.storage import store_for

    store = store_for("gs://bucket/runs/1/manifest.json")
    store.put_bytes(b"{}", "gs://bucket/runs/1/manifest.json")   # create-only
"""

from __future__ import annotations

from clients.storage.base import ObjectExistsError, ObjectNotFoundError, ObjectStore, StoredObject
from clients.storage.uris import join_uri, local_path_of, scheme_of, split_gs_uri

__all__ = [
    "ObjectExistsError",
    "ObjectNotFoundError",
    "ObjectStore",
    "StoredObject",
    "join_uri",
    "local_path_of",
    "scheme_of",
    "split_gs_uri",
    "store_for",
]


def store_for(uri: str) -> ObjectStore:
    """The store for ``uri``: ``gs://`` -> GCS (settings' project and chunk size), else local files."""
    scheme = scheme_of(uri)
    if scheme == "file":
        from clients.storage.local import LocalStore

        return LocalStore()
    if scheme == "gs":
        from clients.storage.gcs import gcs_store_from_settings

        return gcs_store_from_settings()
    raise ValueError(f"{uri}: unsupported storage scheme {scheme!r}; use file://, a local path or gs://")
