"""``file://`` objects: plain files below a directory, written create-only and atomically.

A write goes to a temporary file beside the destination and is then *hard-linked* into place:
``os.link`` fails if the destination exists, so two writers can never clobber each other and a
reader never sees a half-written file. Filesystems without hard links fall back to an exclusive
rename check (still atomic, with a tiny race window noted below).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from clients.storage.base import ObjectExistsError, ObjectNotFoundError, ObjectStore, StoredObject
from clients.storage.digests import FileDigest
from clients.storage.uris import local_path_of

_COPY_BLOCK = 8 * 1024 * 1024


def sha256_of_file(path: Path) -> str:
    """Hex sha256 of a file, read in 8 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_COPY_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _copy_hashing(src: BinaryIO, dst: BinaryIO) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    while block := src.read(_COPY_BLOCK):
        digest.update(block)
        dst.write(block)
        size += len(block)
    return size, digest.hexdigest()


class ChangedWhileCopyingError(IOError):
    """The source file is not the one the caller hashed; nothing was written."""


class LocalStore(ObjectStore):
    """Objects as files. URIs are ``file:///abs/path`` or plain local paths."""

    @contextmanager
    def _create_only(self, uri: str) -> Iterator[BinaryIO]:
        """Yield a temp file; on success, link it to the URI's path or raise ObjectExistsError."""
        dest = local_path_of(uri)
        if dest.exists():
            raise ObjectExistsError(f"{uri}: an object is already there; writes never overwrite")
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            try:
                os.link(tmp, dest)  # atomic and fails if dest exists
            except FileExistsError:
                raise ObjectExistsError(f"{uri}: an object is already there; writes never overwrite") from None
            except OSError:  # no hard links here (some network/FUSE filesystems)
                if dest.exists():
                    raise ObjectExistsError(f"{uri}: an object is already there; writes never overwrite") from None
                os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    def put_file(self, local_path: Path, uri: str, digest: FileDigest | None = None) -> StoredObject:
        with open(local_path, "rb") as src, self._create_only(uri) as dst:
            size, sha = _copy_hashing(src, dst)
            if digest is not None and (size, sha) != (digest.size, digest.sha256):
                raise ChangedWhileCopyingError(
                    f"{local_path}: changed after it was hashed (now {size} bytes, sha256 {sha}); stage it again"
                )
        return StoredObject(uri=self._canonical(uri), size=size, sha256=sha, uploaded=True)

    def put_bytes(self, data: bytes, uri: str) -> StoredObject:
        with self._create_only(uri) as dst:
            dst.write(data)
        return StoredObject(
            uri=self._canonical(uri), size=len(data), sha256=hashlib.sha256(data).hexdigest(), uploaded=True
        )

    def get_file(self, uri: str, local_path: Path) -> Path:
        src_path = self._existing(uri)
        local_path = Path(local_path)
        local_path.parent.mkdir(parents=True, exist_ok=True)
        with open(src_path, "rb") as src, open(local_path, "wb") as dst:
            shutil.copyfileobj(src, dst, _COPY_BLOCK)
        return local_path

    def get_bytes(self, uri: str) -> bytes:
        return self._existing(uri).read_bytes()

    def exists(self, uri: str) -> bool:
        return local_path_of(uri).is_file()

    def list(self, prefix_uri: str) -> list[str]:
        prefix = local_path_of(prefix_uri)
        base = prefix if prefix.is_dir() else prefix.parent
        if not base.is_dir():
            return []
        found = (
            p for p in base.rglob("*") if p.is_file() and not p.name.startswith(".") and str(p).startswith(str(prefix))
        )
        return sorted(p.as_uri() for p in found)

    def local_path(self, uri: str) -> Path | None:
        return local_path_of(uri)

    def size(self, uri: str) -> int:
        return self._existing(uri).stat().st_size

    def sha256(self, uri: str) -> str:
        return sha256_of_file(self._existing(uri))

    def _existing(self, uri: str) -> Path:
        path = local_path_of(uri)
        if not path.is_file():
            raise ObjectNotFoundError(f"{uri}: no such object")
        return path

    @staticmethod
    def _canonical(uri: str) -> str:
        return local_path_of(uri).as_uri()
