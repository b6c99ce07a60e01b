"""``gs://`` objects through google-cloud-storage.

Every write carries ``if_generation_match=0`` (create-only: GCS answers 412 if anything is there),
so retries are safe and nothing is ever overwritten. Large files go up as resumable uploads in
chunks of a multiple of 256 KiB; the file's crc32c is sent with the upload (GCS rejects a
mismatch) and compared again with what the server reports afterwards. Downloads are checked
against the object's crc32c before they are moved into place. Transient errors (429, 5xx,
connection resets) are retried with google-api-core's ``Retry``. A large file to be stored under
its own hash (``prepare_upload``) is read into memory while it is hashed, so it is read only once.

A retried create-only write can meet its own object: GCS stored it, the reply was lost, and the
retry gets 412 (or, for a resumable upload, 404 for the finished session). When the object there
has our size and crc32c (and our sha256 in its metadata, where it has one), the write is done and
succeeds; anything else keeps the error, naming the object and what it holds.

The client is a plain ``storage.Client``: with ``STORAGE_EMULATOR_HOST`` set it talks, anonymously,
to that emulator instead of Google.

    store = GcsStore(storage.Client(), chunk_size=16 * 1024 * 1024)
    store.put_file(Path("cells.h5ad"), "gs://my-bucket/inputs/cells.h5ad")
"""

from __future__ import annotations

import hashlib
import logging
import mimetypes
import os
import tempfile
from functools import lru_cache, partial
from pathlib import Path
from typing import BinaryIO

from google.api_core import exceptions as gexc
from google.api_core.retry import Retry
from google.cloud import storage
from google.cloud.storage.exceptions import DataCorruption
from google.cloud.storage.retry import DEFAULT_RETRY

from clients.storage.base import ObjectExistsError, ObjectNotFoundError, ObjectStore, PreparedUpload, StoredObject
from clients.storage.digests import FileDigest, crc32c_b64, crc32c_of_file, digest_file
from clients.storage.read_ahead import ReadAhead, read_ahead
from clients.storage.uris import split_gs_uri

CHUNK_QUANTUM = 256 * 1024  # GCS requires resumable chunks to be multiples of 256 KiB
RESUMABLE_THRESHOLD = 8 * 1024 * 1024  # above this a file goes up in chunks (the library's own threshold)

log = logging.getLogger(__name__)


def round_chunk_size(nbytes: int) -> int:
    """The nearest multiple of 256 KiB at or below ``nbytes`` (at least 256 KiB)."""
    return max(CHUNK_QUANTUM, nbytes // CHUNK_QUANTUM * CHUNK_QUANTUM)


def _content_type(path: Path) -> str | None:
    return mimetypes.guess_type(path.name)[0]


class ChecksumMismatchError(IOError):
    """What arrived differs from what was sent; the corrupt copy has been removed."""


class GcsStore(ObjectStore):
    """A GCS store; one instance can serve any bucket the client may reach."""

    def __init__(
        self,
        client: storage.Client,
        *,
        chunk_size: int = 16 * 1024 * 1024,
        retry: Retry = DEFAULT_RETRY,
        read_ahead_bytes: int = 512 * 1024 * 1024,
    ) -> None:
        self.client = client
        self.chunk_size = round_chunk_size(chunk_size)
        self.retry = retry
        self.read_ahead_bytes = read_ahead_bytes

    # -- writes ---------------------------------------------------------------------------------

    def put_file(self, local_path: Path, uri: str, digest: FileDigest | None = None) -> StoredObject:
        """Upload a file create-only. ``digest`` skips re-hashing when the caller already has it."""
        local_path = Path(local_path)
        digest = digest or digest_file(local_path)
        with open(local_path, "rb") as stream:
            return self._put_stream(stream, uri, digest, content_type=_content_type(local_path))

    def prepare_upload(self, local_path: Path, digest: FileDigest | None = None) -> PreparedUpload:
        """Hash a file for an upload named by its hash, reading it into memory meanwhile (see read_ahead).

        Only large files with no known digest are read ahead, up to ``read_ahead_bytes``; the held
        bytes live as long as the returned upload does.
        """
        path = Path(local_path)
        if digest is not None or path.stat().st_size <= RESUMABLE_THRESHOLD or self.read_ahead_bytes < self.chunk_size:
            return super().prepare_upload(path, digest)
        held = read_ahead(path, self.chunk_size, self.read_ahead_bytes)
        return PreparedUpload(held.digest, partial(self._put_read_ahead, held))

    def _put_read_ahead(self, held: ReadAhead, uri: str) -> StoredObject:
        with held.open() as stream:
            return self._put_stream(stream, uri, held.digest, content_type=_content_type(held.path))

    def _put_stream(self, stream: BinaryIO, uri: str, digest: FileDigest, content_type: str | None) -> StoredObject:
        """Upload ``digest.size`` bytes from ``stream`` create-only, checked against ``digest.crc32c``.

        Large files: the crc32c is sent with the upload, so the server rejects anything else, and
        compared with the server's afterwards; the library's own per-chunk checksum is then
        redundant and left off (it would read the data a second time).
        """
        resumable = digest.size > RESUMABLE_THRESHOLD
        blob = self._blob(uri, chunk_size=self.chunk_size if resumable else None)
        blob.metadata = {"sha256": digest.sha256}
        try:
            with self._errors(uri):
                blob.upload_from_file(
                    stream,
                    size=digest.size,
                    content_type=content_type,
                    if_generation_match=0,
                    checksum=None if resumable else "crc32c",
                    crc32c_checksum_value=digest.crc32c if resumable else None,
                    retry=self.retry,
                )
        except (ObjectExistsError, ObjectNotFoundError) as refused:
            self._ours_already_there(uri, digest.size, digest.crc32c, digest.sha256, refused)
            return StoredObject(uri=uri, size=digest.size, sha256=digest.sha256, uploaded=False)
        self._verify_upload(blob, uri, digest.crc32c)
        return StoredObject(uri=uri, size=digest.size, sha256=digest.sha256, uploaded=True)

    def put_bytes(self, data: bytes, uri: str) -> StoredObject:
        sha = hashlib.sha256(data).hexdigest()
        blob = self._blob(uri)
        blob.metadata = {"sha256": sha}
        try:
            with self._errors(uri):
                blob.upload_from_string(data, if_generation_match=0, checksum="crc32c", retry=self.retry)
        except (ObjectExistsError, ObjectNotFoundError) as refused:
            self._ours_already_there(uri, len(data), crc32c_b64(data), sha, refused)
            return StoredObject(uri=uri, size=len(data), sha256=sha, uploaded=False)
        self._verify_upload(blob, uri, crc32c_b64(data))
        return StoredObject(uri=uri, size=len(data), sha256=sha, uploaded=True)

    def _ours_already_there(self, uri: str, size: int, crc32c: str, sha256: str, refused: Exception) -> None:
        """Return if the object at ``uri`` holds exactly our bytes (a retry met our own write); else raise ``refused``.

        412 on a create-only write means something is there; a 404 on an upload means its session
        or bucket is gone. Either way, the object GCS now holds decides.
        """
        try:
            there = self._metadata(uri)
        except ObjectNotFoundError:
            raise refused  # nothing there: the original error is the whole story
        their_sha = (there.metadata or {}).get("sha256")
        if int(there.size or 0) == size and there.crc32c == crc32c and their_sha in (None, sha256):
            log.info("%s: the create-only write met an object with our size and crc32c: already written", uri)
            return
        if isinstance(refused, ObjectExistsError):
            raise ObjectExistsError(
                f"{uri}: an object is already there and it is not ours (it holds {there.size} bytes, crc32c "
                f"{there.crc32c}; we wrote {size} bytes, crc32c {crc32c}); writes never overwrite: write to a new "
                "prefix, or remove that object if it is stale"
            ) from refused
        raise refused

    def _verify_upload(self, blob: storage.Blob, uri: str, expected_crc32c: str) -> None:
        if blob.crc32c != expected_crc32c:
            # Only the generation we just wrote is removed: never anything older or newer.
            blob.delete(if_generation_match=blob.generation, retry=self.retry)
            raise ChecksumMismatchError(
                f"{uri}: the server holds crc32c {blob.crc32c} but we sent {expected_crc32c}; "
                "the corrupt upload was deleted, upload again"
            )

    # -- reads ----------------------------------------------------------------------------------

    def get_file(self, uri: str, local_path: Path) -> Path:
        """Download to a temp file beside ``local_path``, check its crc32c, then move it into place."""
        local_path = Path(local_path)
        blob = self._metadata(uri)
        local_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{local_path.name}.", suffix=".part", dir=local_path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            with self._errors(uri):
                # Pin the generation we looked at, so a concurrent change cannot mix two versions.
                # checksum=None: the crc32c is checked once, below, against the object's own
                blob.download_to_filename(
                    str(tmp), if_generation_match=blob.generation, checksum=None, retry=self.retry
                )
            got = crc32c_of_file(tmp)
            if got != blob.crc32c:
                raise ChecksumMismatchError(
                    f"{uri}: downloaded crc32c {got} differs from the object's {blob.crc32c}; download again"
                )
            os.replace(tmp, local_path)
        finally:
            tmp.unlink(missing_ok=True)
        return local_path

    def get_bytes(self, uri: str) -> bytes:
        blob = self._metadata(uri)
        with self._errors(uri):
            data = blob.download_as_bytes(if_generation_match=blob.generation, checksum=None, retry=self.retry)
        if crc32c_b64(data) != blob.crc32c:
            raise ChecksumMismatchError(f"{uri}: downloaded bytes do not match the object's crc32c; read again")
        return data

    def exists(self, uri: str) -> bool:
        with self._errors(uri):
            return self._blob(uri).exists(retry=self.retry)

    def size(self, uri: str) -> int:
        return int(self._metadata(uri).size)

    def generation(self, uri: str) -> int:
        """The object's generation: changes whenever the object is replaced."""
        return int(self._metadata(uri).generation)

    def stored_sha256(self, uri: str) -> str | None:
        """The sha256 recorded in the object's metadata at upload (None for objects others wrote)."""
        return (self._metadata(uri).metadata or {}).get("sha256")

    def list(self, prefix_uri: str) -> list[str]:
        bucket, prefix = split_gs_uri(prefix_uri)
        with self._errors(prefix_uri):
            blobs = self.client.list_blobs(bucket, prefix=prefix, retry=self.retry)
            return sorted(f"gs://{bucket}/{b.name}" for b in blobs)

    # -- helpers --------------------------------------------------------------------------------

    def _blob(self, uri: str, chunk_size: int | None = None) -> storage.Blob:
        bucket, key = split_gs_uri(uri)
        if not key:
            raise ValueError(f"{uri}: names a bucket, not an object")
        return self.client.bucket(bucket).blob(key, chunk_size=chunk_size)

    def _metadata(self, uri: str) -> storage.Blob:
        bucket, key = split_gs_uri(uri)
        with self._errors(uri):
            blob = self.client.bucket(bucket).get_blob(key, retry=self.retry)
        if blob is None:
            raise ObjectNotFoundError(f"{uri}: no such object")
        return blob

    def _errors(self, uri: str) -> _GcsErrors:
        return _GcsErrors(uri)


class _GcsErrors:
    """Turns the service's answers into this package's errors, keeping the service's words."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None:
            return False
        if isinstance(exc, gexc.PreconditionFailed):
            raise ObjectExistsError(f"{self.uri}: an object is already there; writes never overwrite") from exc
        if isinstance(exc, gexc.NotFound):
            raise ObjectNotFoundError(f"{self.uri}: not found (no such object or bucket): {exc.message}") from exc
        if isinstance(exc, (gexc.Conflict, gexc.BadRequest)) and "crc32c" in str(exc).lower():
            raise ChecksumMismatchError(f"{self.uri}: the server rejected the upload's crc32c: {exc.message}") from exc
        if isinstance(exc, DataCorruption):
            raise ChecksumMismatchError(f"{self.uri}: checksum mismatch in transfer: {exc}") from exc
        return False


@lru_cache(maxsize=8)
def _client(project: str | None, emulator_host: str | None) -> storage.Client:
    # emulator_host is part of the cache key only: storage.Client reads STORAGE_EMULATOR_HOST itself.
    return storage.Client(project=project)


def gcs_store_from_settings() -> GcsStore:
    """A GcsStore configured from ``STACKFLOWS_STORAGE__*`` (project, chunk size, retry, read-ahead)."""
    from clients.settings import get_settings

    cfg = get_settings().storage
    client = _client(cfg.project, os.environ.get("STORAGE_EMULATOR_HOST"))
    return GcsStore(
        client,
        chunk_size=cfg.chunk_size_mb * 1024 * 1024,
        retry=DEFAULT_RETRY.with_timeout(cfg.retry_timeout_s),
        read_ahead_bytes=cfg.read_ahead_mb * 1024 * 1024,
    )
