"""Content-addressed placement: a file goes to ``<root>/inputs/<sha256>/<filename>``, once.

The sha256 in the key makes the URI a name for the bytes themselves: staging the same file again
(from any machine, any flow run) finds it there and uploads nothing, and a job that reads the URI
always reads exactly what was validated.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from clients.storage import store_for
from clients.storage.base import ObjectExistsError, ObjectNotFoundError, StoredObject
from clients.storage.digests import FileDigest, cached_digest, file_identity, remember_digest
from clients.storage.uris import join_uri

INPUTS_PREFIX = "inputs"


class ContentMismatchError(RuntimeError):
    """The object at a content address is not the content its name says (it was tampered with)."""


def content_uri(root: str, sha256: str, filename: str) -> str:
    return join_uri(root, INPUTS_PREFIX, sha256, filename)


def put_content_addressed(
    local_path: Path,
    root: str,
    *,
    filename: str | None = None,
    digest: FileDigest | None = None,
    digest_cache_dir: Path | None = None,
) -> StoredObject:
    """Store ``local_path`` under its sha256 below ``root``; ``uploaded=False`` if it was already there.

    ``digest_cache_dir`` remembers digests by file stat so an unchanged file is not re-read. With no
    digest known, the store hashes the file and may read it ahead for the upload meanwhile
    (``ObjectStore.prepare_upload``).
    """
    local_path = Path(local_path)
    store = store_for(root)
    identity = file_identity(local_path)
    known = digest or cached_digest(local_path, digest_cache_dir)
    upload = store.prepare_upload(local_path, known)
    if known is None:
        remember_digest(local_path, digest_cache_dir, upload.digest, identity)
    uri = content_uri(root, upload.digest.sha256, filename or local_path.name)
    present = _present(store, uri, upload.digest)
    if present is not None:
        return present
    try:
        return upload.put(uri)
    except ObjectExistsError:
        # Someone (or an earlier attempt of this call) stored it first: same name, same bytes.
        present = _present(store, uri, upload.digest)
        if present is None:
            raise
        return present


def _present(store, uri: str, digest: FileDigest) -> StoredObject | None:
    try:
        size = store.size(uri)
    except ObjectNotFoundError:
        return None
    if size != digest.size:
        raise ContentMismatchError(
            f"{uri}: holds {size} bytes but its name promises {digest.size} bytes of sha256 {digest.sha256}; "
            "the object was changed outside stackflows: remove it and stage again"
        )
    return StoredObject(uri=uri, size=size, sha256=digest.sha256, uploaded=False)


def fetch_to_cache(uri: str, cache_dir: Path) -> Path:
    """A local file with the object's bytes: the file itself for local URIs, else a cached download.

    Downloads are kept per object generation, so a second look at the same object reads the disk.
    """
    store = store_for(uri)
    local = store.local_path(uri)
    if local is not None:
        return local
    from clients.storage.gcs import GcsStore

    if not isinstance(store, GcsStore):
        raise ValueError(f"{uri}: no download cache for {type(store).__name__}")
    version = store.generation(uri)
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    target = Path(cache_dir) / hashlib.sha256(f"{uri}#{version}".encode()).hexdigest()[:32] / name
    if not target.is_file():
        store.get_file(uri, target)
    return target
