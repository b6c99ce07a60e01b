"""The file:// store: create-only, atomic, and reachable through file:// URIs and plain paths alike."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from clients.storage import ObjectExistsError, ObjectNotFoundError, store_for
from clients.storage.local import LocalStore


def test_storage_local_round_trip_through_uri_and_plain_path(tmp_path: Path) -> None:
    uri = (tmp_path / "runs" / "a.bin").as_uri()
    store = store_for(uri)
    assert isinstance(store, LocalStore)

    stored = store.put_bytes(b"payload", uri)

    assert stored.uri == uri and stored.size == 7 and stored.uploaded
    assert store.get_bytes(str(tmp_path / "runs" / "a.bin")) == b"payload"  # plain path, same object
    assert store.exists(uri) and store.size(uri) == 7
    assert store.get_file(uri, tmp_path / "copy.bin").read_bytes() == b"payload"


def test_storage_local_never_overwrites_and_keeps_the_original(tmp_path: Path) -> None:
    uri = (tmp_path / "out.json").as_uri()
    store = store_for(uri)
    store.put_bytes(b"first", uri)
    src = tmp_path / "other.bin"
    src.write_bytes(b"second")

    with pytest.raises(ObjectExistsError):
        store.put_bytes(b"second", uri)
    with pytest.raises(ObjectExistsError):
        store.put_file(src, uri)

    assert store.get_bytes(uri) == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.bin", "out.json"]  # no temp files left


def test_storage_local_concurrent_writers_exactly_one_wins(tmp_path: Path) -> None:
    uri = (tmp_path / "race.bin").as_uri()
    store = LocalStore()
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def write(i: int) -> None:
        barrier.wait()
        try:
            store.put_bytes(bytes([i]) * 1_000_000, uri)
            outcomes.append("won")
        except ObjectExistsError:
            outcomes.append("refused")

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert outcomes.count("won") == 1 and outcomes.count("refused") == 7
    data = store.get_bytes(uri)
    assert len(data) == 1_000_000 and len(set(data)) == 1  # one writer's bytes, whole


def test_storage_local_list_and_missing(tmp_path: Path) -> None:
    store = LocalStore()
    for name in ["p/b.txt", "p/a.txt", "p/sub/c.txt", "q/d.txt"]:
        store.put_bytes(b"x", str(tmp_path / name))

    listed = store.list((tmp_path / "p").as_uri())

    assert listed == sorted((tmp_path / n).as_uri() for n in ["p/a.txt", "p/b.txt", "p/sub/c.txt"])
    with pytest.raises(ObjectNotFoundError):
        store.get_bytes(str(tmp_path / "p" / "nope"))
    assert not store.exists(str(tmp_path / "p" / "nope"))


def test_storage_unknown_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported storage scheme 's3'"):
        store_for("s3://bucket/key")
