"""Checksums computed in one pass over a file: sha256 names content, crc32c is what GCS verifies."""

from __future__ import annotations

import base64
import hashlib
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
    """sha256 and crc32c of a file, reading it once in 8 MiB blocks."""
    sha = hashlib.sha256()
    crc = google_crc32c.Checksum()
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            sha.update(block)
            crc.update(block)
            size += len(block)
    return FileDigest(size=size, sha256=sha.hexdigest(), crc32c=base64.b64encode(crc.digest()).decode())


def crc32c_of_file(path: Path) -> str:
    return digest_file(path).crc32c
