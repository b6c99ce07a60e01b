"""The object store interface every storage backend implements.

Keys are paths below a store's root; URIs are ``<scheme>://...`` strings that name one object.
Two rules hold for every backend: nothing is ever overwritten (writes are create-only and atomic),
and what is read back is checked against what was written.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from clients.storage.digests import FileDigest, digest_file


class ObjectExistsError(FileExistsError):
    """A create-only write found an object already at that URI."""


class ObjectNotFoundError(FileNotFoundError):
    """No object at that URI."""


class StoredObject(BaseModel):
    uri: str
    size: int
    sha256: str
    uploaded: bool  # False when an identical object was already there


@dataclass(frozen=True)
class PreparedUpload:
    """A local file, hashed, ready to be written to a URI chosen from its hash (``ObjectStore.prepare_upload``)."""

    digest: FileDigest
    put: Callable[[str], StoredObject]  # create-only, like ``put_file``


class ObjectStore(ABC):
    """One storage system (a directory tree, a GCS bucket) reached through URIs."""

    @abstractmethod
    def put_file(self, local_path: Path, uri: str, digest: FileDigest | None = None) -> StoredObject:
        """Copy a local file to ``uri``; fails with ObjectExistsError if anything is there.

        ``digest`` (from ``clients.storage.digests``) saves re-reading a file the caller has hashed;
        the write fails if the file no longer matches it.
        """

    def prepare_upload(self, local_path: Path, digest: FileDigest | None = None) -> PreparedUpload:
        """Hash ``local_path`` (unless ``digest`` is known) for an upload whose URI depends on the hash.

        A store may read the file ahead here, so that ``put`` does not read it a second time.
        """
        path = Path(local_path)
        digest = digest or digest_file(path)
        return PreparedUpload(digest, lambda uri: self.put_file(path, uri, digest=digest))

    @abstractmethod
    def put_bytes(self, data: bytes, uri: str) -> StoredObject:
        """Write ``data`` to ``uri``, create-only."""

    def put_bytes_once(self, data: bytes, uri: str) -> str:
        """``put_bytes``, except that finding these very bytes there already counts as done: a retried
        step rewrites its outputs harmlessly. Different bytes there still raise ObjectExistsError."""
        try:
            return self.put_bytes(data, uri).uri
        except ObjectExistsError:
            if self.get_bytes(uri) == data:
                return uri
            raise

    @abstractmethod
    def get_file(self, uri: str, local_path: Path) -> Path:
        """Download ``uri`` to ``local_path`` (checksum verified); returns the path."""

    @abstractmethod
    def get_bytes(self, uri: str) -> bytes: ...

    @abstractmethod
    def exists(self, uri: str) -> bool: ...

    @abstractmethod
    def list(self, prefix_uri: str) -> list[str]:
        """URIs of the objects under a prefix, sorted."""

    def size(self, uri: str) -> int:
        """Size in bytes of the object at ``uri`` (ObjectNotFoundError if none)."""
        return len(self.get_bytes(uri))

    def local_path(self, uri: str) -> Path | None:
        """The local file behind ``uri`` when the store is a filesystem, so readers can skip a copy."""
        return None
