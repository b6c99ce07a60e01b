"""Staging a file nobody has hashed yet: it is read into memory while hashed, then sent from memory.

Through the real google-cloud-storage client against the emulator (1 MiB chunks, see conftest): the
object must hold exactly the file's bytes under exactly its sha256, whether all of the file, part
of it or none of it was held, and when chunks fail and are sent again.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from clients.settings import get_settings
from clients.storage import store_for
from clients.storage.content import put_content_addressed
from clients.storage.digests import digest_file
from clients.storage.gcs import ChecksumMismatchError
from clients.storage.read_ahead import read_ahead
from tests.fake_gcs import Fault, GcsEmulator

ROOT = "gs://stackflows-test/root"
MiB = 1024 * 1024


@pytest.fixture
def big_file(tmp_path: Path) -> Path:
    """Above the 8 MiB resumable threshold and not a whole number of 1 MiB chunks."""
    path = tmp_path / "cells.h5ad"
    path.write_bytes(os.urandom(9 * MiB + 123))
    return path


def _use_read_ahead(monkeypatch: pytest.MonkeyPatch, mb: int) -> None:
    monkeypatch.setenv("STACKFLOWS_STORAGE__READ_AHEAD_MB", str(mb))
    get_settings.cache_clear()


@pytest.mark.parametrize("read_ahead_mb", [0, 4, 512], ids=["none-held", "part-held", "all-held"])
def test_storage_read_ahead_stages_the_exact_bytes_under_their_sha256(
    gcs: GcsEmulator, big_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read_ahead_mb: int
) -> None:
    _use_read_ahead(monkeypatch, read_ahead_mb)
    expected = digest_file(big_file)

    stored = put_content_addressed(big_file, ROOT)

    assert stored.uri == f"{ROOT}/inputs/{expected.sha256}/cells.h5ad" and stored.uploaded
    back = store_for(stored.uri).get_file(stored.uri, tmp_path / "back.h5ad")
    assert back.read_bytes() == big_file.read_bytes()
    chunk_puts = [r for r in gcs.proxy.requests if r.method == "PUT" and "upload_id" in r.query]
    assert len(chunk_puts) == 10  # still a resumable upload in 1 MiB chunks


def test_storage_read_ahead_upload_survives_failed_chunks(
    gcs: GcsEmulator, big_file: Path, tmp_path: Path
) -> None:
    gcs.proxy.faults.append(Fault(lambda r: r.method == "PUT" and "upload_id" in r.query, times=3, status=503))

    stored = put_content_addressed(big_file, ROOT)

    assert all(f.times == 0 for f in gcs.proxy.faults)
    assert store_for(stored.uri).get_bytes(stored.uri) == big_file.read_bytes()


def test_storage_read_ahead_held_bytes_are_what_was_hashed(gcs: GcsEmulator, big_file: Path) -> None:
    """An edit after hashing cannot reach a held file's object: the URI keeps naming what was hashed."""
    original = big_file.read_bytes()
    upload = store_for(ROOT).prepare_upload(big_file)
    big_file.write_bytes(b"edited" + original[6:])

    stored = upload.put(f"{ROOT}/inputs/{upload.digest.sha256}/cells.h5ad")

    assert store_for(stored.uri).get_bytes(stored.uri) == original


def test_storage_read_ahead_edit_to_the_unheld_part_is_refused(
    gcs: GcsEmulator, big_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use_read_ahead(monkeypatch, 4)
    upload = store_for(ROOT).prepare_upload(big_file)
    data = bytearray(big_file.read_bytes())
    data[-1] ^= 0xFF  # beyond the 4 MiB held: the upload reads it from disk again
    big_file.write_bytes(bytes(data))
    uri = f"{ROOT}/inputs/{upload.digest.sha256}/cells.h5ad"

    with pytest.raises(ChecksumMismatchError):
        upload.put(uri)

    assert not store_for(uri).exists(uri)


@pytest.mark.parametrize("max_mb", [0, 3, 64], ids=["none-held", "part-held", "all-held"])
def test_storage_read_ahead_stream_reads_like_the_file(big_file: Path, max_mb: int) -> None:
    """Any position, any length, across held chunks and the file: the bytes the file has there."""
    data = big_file.read_bytes()
    held = read_ahead(big_file, chunk_size=MiB, max_bytes=max_mb * MiB)
    assert held.digest == digest_file(big_file)
    spans = [(0, MiB), (MiB, MiB), (MiB - 5, 10), (3 * MiB - 7, MiB), (2 * MiB + 1, 5 * MiB), (9 * MiB, MiB)]

    with held.open() as stream:
        for start, size in spans:
            stream.seek(start)
            assert stream.read(size) == data[start : start + size]
            assert stream.tell() == min(start + size, len(data))
        stream.seek(0)
        assert stream.read() == data
        assert stream.read(10) == b""
