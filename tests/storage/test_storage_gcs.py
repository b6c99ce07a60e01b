"""The gs:// store through the real google-cloud-storage client, against the emulator on loopback.

The emulator does not enforce generation preconditions; tests/fake_gcs.py's proxy does (412, as
GCS would) and records each request, so these tests check both what our code asks GCS for and
what a user sees when GCS says no.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from clients.storage import ObjectExistsError, ObjectNotFoundError, store_for
from clients.storage.gcs import ChecksumMismatchError, GcsStore
from tests.fake_gcs import Fault, GcsEmulator

ROOT = "gs://stackflows-test/root"


@pytest.fixture
def big_file(tmp_path: Path) -> Path:
    """9 MiB: above the 8 MiB multipart limit, so a resumable upload of nine 1 MiB chunks."""
    path = tmp_path / "big.h5ad"
    path.write_bytes(os.urandom(9 * 1024 * 1024 + 123))
    return path


def test_storage_gcs_resumable_upload_round_trip(gcs: GcsEmulator, big_file: Path, tmp_path: Path) -> None:
    uri = f"{ROOT}/in/big.h5ad"
    store = store_for(uri)
    assert isinstance(store, GcsStore)

    stored = store.put_file(big_file, uri)

    assert stored.uploaded and stored.size == big_file.stat().st_size
    assert store.stored_sha256(uri) == stored.sha256
    starts = gcs.proxy.upload_starts()
    assert [r.query["uploadType"] for r in starts] == [["resumable"]]
    chunk_puts = [r for r in gcs.proxy.requests if r.method == "PUT" and "upload_id" in r.query]
    assert len(chunk_puts) == 10  # 9 full chunks of 1 MiB and the tail
    back = store.get_file(uri, tmp_path / "back" / "big.h5ad")
    assert back.read_bytes() == big_file.read_bytes()


def test_storage_gcs_every_write_asks_for_create_only(gcs: GcsEmulator, big_file: Path) -> None:
    store = store_for(ROOT)
    store.put_bytes(b"{}", f"{ROOT}/a.json")
    store.put_file(big_file, f"{ROOT}/b.h5ad")

    starts = gcs.proxy.upload_starts()

    assert [r.object_name for r in starts] == ["root/a.json", "root/b.h5ad"]
    assert all(r.query.get("ifGenerationMatch") == ["0"] for r in starts)


@pytest.mark.parametrize("size", [100, 9 * 1024 * 1024], ids=["multipart", "resumable"])
def test_storage_gcs_refuses_to_overwrite(gcs: GcsEmulator, tmp_path: Path, size: int) -> None:
    uri = f"{ROOT}/out/predictions.h5ad"
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_bytes(b"1" * size)
    second.write_bytes(b"2" * size)
    store = store_for(uri)
    store.put_file(first, uri)

    with pytest.raises(ObjectExistsError, match="already there"):
        store.put_file(second, uri)

    assert store.get_bytes(uri) == first.read_bytes()
    assert len(gcs.proxy.upload_starts()) == 2  # the refusal (412) is final: not retried


def test_storage_gcs_retries_transient_errors(gcs: GcsEmulator, big_file: Path, tmp_path: Path) -> None:
    uri = f"{ROOT}/flaky.h5ad"
    gcs.proxy.faults += [
        Fault(lambda r: r.is_upload_start(), times=1, status=503),
        Fault(lambda r: r.method == "PUT" and "upload_id" in r.query, times=1, status=503),
        Fault(lambda r: r.query.get("alt") == ["media"], times=1, status=429),
    ]

    store = store_for(uri)
    store.put_file(big_file, uri)
    back = store.get_file(uri, tmp_path / "back.h5ad")

    assert back.read_bytes() == big_file.read_bytes()
    assert all(f.times == 0 for f in gcs.proxy.faults)  # every fault was hit and survived


def test_storage_gcs_corrupt_download_is_rejected_and_not_kept(gcs: GcsEmulator, tmp_path: Path) -> None:
    uri = f"{ROOT}/x.bin"
    store = store_for(uri)
    store.put_bytes(os.urandom(50_000), uri)
    gcs.proxy.corrupt_downloads = True

    with pytest.raises(ChecksumMismatchError):
        store.get_file(uri, tmp_path / "x.bin")
    with pytest.raises(ChecksumMismatchError):
        store.get_bytes(uri)

    assert list(tmp_path.iterdir()) == []  # no half-good file left behind


def test_storage_gcs_file_changed_after_hashing_is_rejected_by_crc32c(gcs: GcsEmulator, big_file: Path) -> None:
    from clients.storage.digests import digest_file

    uri = f"{ROOT}/changed.h5ad"
    digest = digest_file(big_file)
    data = bytearray(big_file.read_bytes())
    data[-1] ^= 0xFF
    big_file.write_bytes(bytes(data))

    with pytest.raises(ChecksumMismatchError):
        store_for(uri).put_file(big_file, uri, digest=digest)

    assert not store_for(uri).exists(uri)


def test_storage_gcs_missing_object_and_bucket(gcs: GcsEmulator, tmp_path: Path) -> None:
    store = store_for(ROOT)
    with pytest.raises(ObjectNotFoundError, match="no such object"):
        store.get_bytes(f"{ROOT}/nothing")
    with pytest.raises(ObjectNotFoundError, match="gs://no-such-bucket/k"):
        store.put_bytes(b"x", "gs://no-such-bucket/k")
    assert not store.exists(f"{ROOT}/nothing")


def test_storage_gcs_list_is_sorted_and_scoped(gcs: GcsEmulator) -> None:
    store = store_for(ROOT)
    for key in ["r/2", "r/1", "r/sub/3", "other/4"]:
        store.put_bytes(b"x", f"{ROOT}/{key}")

    assert store.list(f"{ROOT}/r/") == [f"{ROOT}/r/1", f"{ROOT}/r/2", f"{ROOT}/r/sub/3"]


def test_storage_gcs_proxy_only_refuses_what_the_client_asks_for(gcs: GcsEmulator) -> None:
    """Control: a write without a precondition overwrites, so the refusals above come from our code's request."""
    from google.cloud import storage

    blob = storage.Client().bucket("stackflows-test").blob("root/control.txt")
    blob.upload_from_string(b"first")
    blob.upload_from_string(b"second")

    assert blob.download_as_bytes() == b"second"
    assert all("ifGenerationMatch" not in r.query for r in gcs.proxy.upload_starts())


def _object_created(r) -> bool:
    """The request that completes an object: a multipart upload, or a resumable upload's last chunk."""
    return (r.is_upload_start() and r.query.get("uploadType") == ["multipart"]) or (
        r.method == "PUT" and "upload_id" in r.query
    )


def _nth_chunk(n: int):
    """Matches the n-th chunk PUT of a resumable upload (counted from 1)."""
    seen = []

    def matches(r) -> bool:
        if r.method == "PUT" and "upload_id" in r.query:
            seen.append(r)
            return len(seen) == n
        return False

    return matches


@pytest.mark.parametrize(("size", "finishing_request"), [
    (100, lambda: _object_created),
    (9 * 1024 * 1024 + 5, lambda: _nth_chunk(10)),  # 1 MiB chunks: the tenth (5 bytes) finishes the object
], ids=["multipart", "resumable"])
def test_storage_gcs_create_only_write_whose_reply_was_lost_succeeds(
    gcs: GcsEmulator, tmp_path: Path, size: int, finishing_request
) -> None:
    """GCS stored the object but the reply was lost; the retry meets 412 and finds our own bytes there."""
    uri = f"{ROOT}/out/predictions.h5ad"
    local = tmp_path / "predictions.h5ad"
    local.write_bytes(os.urandom(size))
    gcs.proxy.faults.append(Fault(finishing_request(), times=1, status=503, lose_reply=True))

    stored = store_for(uri).put_file(local, uri)

    assert gcs.proxy.faults[0].times == 0  # the reply really was lost
    assert stored.uri == uri and stored.size == size
    assert store_for(uri).get_bytes(uri) == local.read_bytes()


def test_storage_gcs_lost_reply_of_bytes_then_412_is_a_success(gcs: GcsEmulator) -> None:
    uri = f"{ROOT}/out/progress.json"
    gcs.proxy.faults.append(Fault(_object_created, times=1, status=503, lose_reply=True))

    stored = store_for(uri).put_bytes(b'{"done": true}', uri)

    assert gcs.proxy.faults[0].times == 0
    assert stored.uri == uri and store_for(uri).get_bytes(uri) == b'{"done": true}'
    assert [r.query.get("ifGenerationMatch") for r in gcs.proxy.upload_starts()] == [["0"], ["0"]]


def test_storage_gcs_412_over_different_bytes_still_fails_naming_the_object(gcs: GcsEmulator) -> None:
    uri = f"{ROOT}/out/summary.json"
    store = store_for(uri)
    store.put_bytes(b"theirs", uri)
    gcs.proxy.faults.append(Fault(_object_created, times=1, status=503, lose_reply=True))

    with pytest.raises(ObjectExistsError, match="gs://stackflows-test/root/out/summary.json"):
        store.put_bytes(b"ours", uri)

    assert store.get_bytes(uri) == b"theirs"
