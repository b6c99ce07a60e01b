"""A file read into memory while it is hashed, for an upload whose object name is the hash.

A content-addressed upload cannot start before the file's sha256 is known: the hash is part of the
object's name. Hashing first and then uploading reads the file twice, and the upload's read is not
cheap: the storage library reads every chunk into a fresh bytes object of the chunk's size, which
costs about as much as the hash itself (page faults on every fresh chunk). So here both reads run
side by side: a helper thread hashes the file through one small reused buffer while this thread
reads it in upload-sized chunks and computes their crc32c. The upload then sends those chunks as
they are. At most ``max_bytes`` are held; the rest of a larger file is crc32c'd now and read from
disk again by the upload (the server refuses it if it no longer matches). A write to the file
while it is read changes its identity (ctime) and is refused with ``FileChangedError``.

    held = read_ahead(Path("cells.h5ad"), chunk_size=16 * 2**20, max_bytes=512 * 2**20)
    held.digest.sha256           # names the object
    with held.open() as stream:  # what the upload reads
        ...
"""

from __future__ import annotations

import base64
import hashlib
import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import google_crc32c

from clients.storage.digests import BLOCK_SIZE, FileDigest, file_identity


class FileChangedError(IOError):
    """The file was written to while it was being read for an upload."""


@dataclass(frozen=True)
class ReadAhead:
    path: Path
    digest: FileDigest
    chunk_size: int
    chunks: tuple[bytes, ...]  # the file's first bytes, ``chunk_size`` each (the last may be shorter)

    def open(self) -> ReadAheadStream:
        return ReadAheadStream(self)


def read_ahead(path: Path, chunk_size: int, max_bytes: int) -> ReadAhead:
    """Hash ``path`` and hold up to ``max_bytes`` of it, in whole chunks, for the upload."""
    path = Path(path)
    before = file_identity(path)
    chunks: list[bytes] = []
    crc = google_crc32c.Checksum()
    size = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256") as pool, open(path, "rb") as fh:
        sha256 = pool.submit(_sha256, path)
        while size + chunk_size <= max_bytes and (chunk := fh.read(chunk_size)):
            chunks.append(chunk)
            crc.update(chunk)
            size += len(chunk)
        while block := fh.read(BLOCK_SIZE):  # beyond what is held: checksum only
            crc.update(block)
            size += len(block)
        digest = FileDigest(size=size, sha256=sha256.result(), crc32c=base64.b64encode(crc.digest()).decode())
    if file_identity(path) != before:
        raise FileChangedError(f"{path}: the file changed while it was being read for upload; upload it again")
    return ReadAhead(path=path, digest=digest, chunk_size=chunk_size, chunks=tuple(chunks))


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()  # one small reused buffer; releases the GIL


class ReadAheadStream(io.RawIOBase):
    """The file as an upload reads it: held chunks are handed over as they are, the rest comes from disk.

    The upload asks for one chunk at a time, at chunk boundaries, so each read returns a held bytes
    object without copying it. Any other read (a resumed upload seeking back mid-chunk) is served
    correctly, by copying.
    """

    def __init__(self, held: ReadAhead) -> None:
        self._held = held
        self._held_bytes = sum(len(c) for c in held.chunks)
        self._file = open(held.path, "rb")
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._held.digest.size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def read(self, size: int = -1) -> bytes:
        total = self._held.digest.size
        end = total if size is None or size < 0 else min(total, self._pos + size)
        index, offset = divmod(self._pos, self._held.chunk_size)
        if offset == 0 and index < len(self._held.chunks) and len(self._held.chunks[index]) == end - self._pos:
            self._pos = end
            return self._held.chunks[index]  # the upload's own request: one whole chunk, no copy
        parts = []
        while self._pos < end and (part := self._piece(end)):
            parts.append(part)
            self._pos += len(part)
        return b"".join(parts)

    def _piece(self, end: int) -> bytes:
        """Bytes from the current position towards ``end``: from one held chunk, or from disk."""
        if self._pos < self._held_bytes:
            index, offset = divmod(self._pos, self._held.chunk_size)
            return self._held.chunks[index][offset : offset + end - self._pos]
        self._file.seek(self._pos)
        return self._file.read(end - self._pos)

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._file.close()
        super().close()
