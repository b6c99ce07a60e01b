"""Checksums computed in one pass over a file: sha256 names content, crc32c is what GCS verifies."""

from __future__ import annotations

import base64
import hashlib
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import google_crc32c
from pydantic import BaseModel

BLOCK_SIZE = 8 * 1024 * 1024


class FileDigest(BaseModel):
    size: int
    sha256: str
    crc32c: str  # base64 of the big-endian CRC32C, as GCS reports it in ``Blob.crc32c``


def crc32c_b64(data: bytes) -> str:
    return base64.b64encode(google_crc32c.Checksum(data).digest()).decode()


def digest_file(path: Path) -> FileDigest:
    """sha256 and crc32c of a file, reading it once in 8 MiB blocks.

    sha256 runs on a helper thread (hashlib releases the GIL on large buffers) while this thread
    computes the crc32c and reads the next block, so the pass costs about as much as sha256 alone.
    """
    sha = hashlib.sha256()
    crc = google_crc32c.Checksum()
    size = 0
    with open(path, "rb") as fh, ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256") as pool:
        pending = None
        while block := fh.read(BLOCK_SIZE):
            if pending is not None:
                pending.result()  # sha256 must see the blocks in order
            pending = pool.submit(sha.update, block)
            crc.update(block)
            size += len(block)
        if pending is not None:
            pending.result()
    return FileDigest(size=size, sha256=sha.hexdigest(), crc32c=base64.b64encode(crc.digest()).decode())


def crc32c_of_file(path: Path) -> str:
    crc = google_crc32c.Checksum()
    with open(path, "rb") as fh:
        while block := fh.read(BLOCK_SIZE):
            crc.update(block)
    return base64.b64encode(crc.digest()).decode()


def file_identity(path: Path) -> str:
    """A name for this file as it is now (path, inode, size, mtime, ctime): any write changes it."""
    st = path.stat()
    ident = f"{path.resolve()}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"
    return hashlib.sha256(ident.encode()).hexdigest()


# Digests remembered by file identity: re-staging an unchanged file then costs a ``stat`` instead of
# a full read, the way git's index and rsync skip unchanged files. Any write to the file changes its
# ctime, so a stale entry is never used. ``cache_dir=None`` remembers nothing.


def cached_digest(path: Path, cache_dir: Path | None) -> FileDigest | None:
    """The digest remembered for ``path`` as it is now, if any."""
    if cache_dir is None:
        return None
    try:
        return FileDigest.model_validate_json((Path(cache_dir) / f"{file_identity(Path(path))}.json").read_text())
    except (OSError, ValueError):
        return None


def remember_digest(path: Path, cache_dir: Path | None, digest: FileDigest, identity: str) -> None:
    """Remember ``digest`` for ``path``, if the file is still ``identity`` (taken before it was read)."""
    if cache_dir is None or file_identity(Path(path)) != identity:
        return
    entry = Path(cache_dir) / f"{identity}.json"
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.with_suffix(f".{uuid.uuid4().hex}.tmp")  # unique per writer, then an atomic rename
    tmp.write_text(digest.model_dump_json())
    os.replace(tmp, entry)


def digest_file_cached(path: Path, cache_dir: Path | None) -> FileDigest:
    """``digest_file``, remembered in ``cache_dir`` by the file's identity."""
    path = Path(path)
    identity = file_identity(path)
    digest = cached_digest(path, cache_dir)
    if digest is None:
        digest = digest_file(path)
        remember_digest(path, cache_dir, digest, identity)
    return digest
