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

_BLOCK = 8 * 1024 * 1024


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
        while block := fh.read(_BLOCK):
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
        while block := fh.read(_BLOCK):
            crc.update(block)
    return base64.b64encode(crc.digest()).decode()


def _stat_key(path: Path) -> str:
    st = path.stat()
    ident = f"{path.resolve()}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"
    return hashlib.sha256(ident.encode()).hexdigest()


def digest_file_cached(path: Path, cache_dir: Path | None) -> FileDigest:
    """``digest_file`` remembered by the file's identity and stat (path, inode, size, mtime, ctime).

    Re-staging an unchanged file then costs a ``stat`` instead of a full read, the way git's index
    and rsync skip unchanged files. Any write to the file changes its ctime, so a stale entry is
    never used. ``cache_dir=None`` always hashes.
    """
    path = Path(path)
    if cache_dir is None:
        return digest_file(path)
    entry = Path(cache_dir) / f"{_stat_key(path)}.json"
    try:
        return FileDigest.model_validate_json(entry.read_text())
    except (OSError, ValueError):
        pass
    digest = digest_file(path)
    if _stat_key(path) == entry.stem:  # unchanged while we read it
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_suffix(f".{uuid.uuid4().hex}.tmp")  # unique per writer, then an atomic rename
        tmp.write_text(digest.model_dump_json())
        os.replace(tmp, entry)
    return digest
