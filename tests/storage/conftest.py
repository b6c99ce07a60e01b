"""Storage test fixtures: one GCS emulator (behind the precondition proxy) per session, a fresh bucket per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from google.cloud import storage

from clients.settings import Settings, get_settings
from tests.fake_gcs import GcsEmulator, gcs_emulator

BUCKET = "stackflows-test"


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[GcsEmulator]:
    with gcs_emulator() as gcs:
        yield gcs


@pytest.fixture
def gcs(gcs_server: GcsEmulator, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[GcsEmulator]:
    """An empty emulator with bucket ``stackflows-test``; storage root ``gs://stackflows-test/root``.

    Chunks are 1 MiB so a few-MB file is a real multi-chunk resumable upload.
    """
    gcs_server.reset()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server.url)
    monkeypatch.setenv("STACKFLOWS_STORAGE__ROOT", f"gs://{BUCKET}/root")
    monkeypatch.setenv("STACKFLOWS_STORAGE__CHUNK_SIZE_MB", "1")
    monkeypatch.setenv("STACKFLOWS_STORAGE__RETRY_TIMEOUT_S", "20")
    get_settings.cache_clear()
    storage.Client().create_bucket(BUCKET)
    gcs_server.proxy.reset()  # tests look only at the requests our code makes
    yield gcs_server
    get_settings.cache_clear()
