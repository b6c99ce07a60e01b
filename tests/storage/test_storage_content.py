"""Content-addressed placement on both backends: same bytes, same URI, uploaded once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from clients.settings import Settings
from clients.storage.content import ContentMismatchError, put_content_addressed
from clients.storage.digests import digest_file
from tests.fake_gcs import GcsEmulator


@pytest.fixture(params=["file", "gs"])
def root(request: pytest.FixtureRequest, settings: Settings) -> str:
    if request.param == "gs":
        request.getfixturevalue("gcs")
        return "gs://stackflows-test/root"
    return settings.storage_root


def test_storage_content_addressed_uploads_once(root: str, tmp_path: Path) -> None:
    src = tmp_path / "cells.h5ad"
    src.write_bytes(os.urandom(3 * 1024 * 1024))
    sha = digest_file(src).sha256

    first = put_content_addressed(src, root, digest_cache_dir=tmp_path / "digests")
    again = put_content_addressed(src, root, digest_cache_dir=tmp_path / "digests")
    copy = tmp_path / "elsewhere" / "cells.h5ad"
    copy.parent.mkdir()
    copy.write_bytes(src.read_bytes())
    from_copy = put_content_addressed(copy, root)

    assert first.uri == f"{root}/inputs/{sha}/cells.h5ad" and first.uploaded
    assert (again.uri, again.uploaded) == (first.uri, False)
    assert (from_copy.uri, from_copy.uploaded) == (first.uri, False)


def test_storage_content_addressed_uploads_nothing_the_second_time_on_gcs(gcs: GcsEmulator, tmp_path: Path) -> None:
    src = tmp_path / "cells.h5ad"
    src.write_bytes(os.urandom(200_000))
    put_content_addressed(src, "gs://stackflows-test/root")
    gcs.proxy.reset()

    again = put_content_addressed(src, "gs://stackflows-test/root")

    assert not again.uploaded
    assert gcs.proxy.upload_starts() == []
    assert all(r.method == "GET" for r in gcs.proxy.requests)


def test_storage_content_edited_file_gets_a_new_address(root: str, tmp_path: Path) -> None:
    src = tmp_path / "cells.h5ad"
    src.write_bytes(b"a" * 1000)
    cache = tmp_path / "digests"
    first = put_content_addressed(src, root, digest_cache_dir=cache)
    src.write_bytes(b"b" * 1000)  # same size, same name, new bytes: the stat cache must notice

    second = put_content_addressed(src, root, digest_cache_dir=cache)

    assert second.uploaded and second.uri != first.uri
    assert second.sha256 == digest_file(src).sha256


def test_storage_content_tampered_object_is_reported(settings: Settings, tmp_path: Path) -> None:
    src = tmp_path / "cells.h5ad"
    src.write_bytes(b"a" * 1000)
    stored = put_content_addressed(src, settings.storage_root)
    target = Path(stored.uri.removeprefix("file://"))
    target.write_bytes(b"short")

    with pytest.raises(ContentMismatchError, match="changed outside stackflows"):
        put_content_addressed(src, settings.storage_root)
