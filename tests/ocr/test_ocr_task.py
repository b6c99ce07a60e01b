"""The ocr_documents Prefect task: a re-run sends only the pages it does not have; markdown lands beside the outputs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect import flow
from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

from clients.ocr import NO_TEXT_FOUND, DocumentText, OcrPageError
from clients.settings import Settings, get_settings
from clients.storage import local_path_of
from tasks.ocr import ocr_documents
from tests.fake_google_identity import FakeGoogleIdentity
from tests.fake_openai_ocr import FakeOcrService
from tests.ocr.conftest import (
    PROTOCOL_LINES,
    SCAN_LINES,
    blank_page,
    image_only_pdf,
    scanned_pdf,
    text_pdf,
    typed_page,
    words_found,
)


@flow
def read_documents(uris: list[str], output_prefix_uri: str) -> list[DocumentText]:
    return ocr_documents(uris, output_prefix_uri)


@pytest.fixture
def fake_service(
    prefect_api: None, settings: Settings, metadata_identity: FakeGoogleIdentity, monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Iterator[FakeOcrService]:
    with FakeOcrService(latency_s=0.02, capacity=4) as fake, temporary_settings(
        {PREFECT_LOCAL_STORAGE_PATH: tmp_path / "prefect-results"}  # page results of this test only
    ):
        monkeypatch.setenv("STACKFLOWS_OCR__SERVICE_URL", fake.url)
        monkeypatch.setenv("STACKFLOWS_OCR__CONCURRENCY", "1")
        get_settings.cache_clear()
        yield fake
    get_settings.cache_clear()


@pytest.fixture
def local_engine(
    prefect_api: None, settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[None]:
    """No service URL: the run's scanned pages are read by RapidOCR on this machine."""
    monkeypatch.delenv("STACKFLOWS_OCR__SERVICE_URL", raising=False)
    get_settings.cache_clear()
    with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: tmp_path / "prefect-results"}):
        yield
    get_settings.cache_clear()


def test_offline_a_scan_reaches_the_agent_with_its_words_and_a_blank_page_is_flagged(
    local_engine: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    scan = tmp_path / "scan.pdf"
    scan.write_bytes(image_only_pdf(typed_page(SCAN_LINES), blank_page()))

    (document,) = read_documents([scan.as_uri()], (tmp_path / "run").as_uri())

    assert document.engines == {"rapidocr": 2} and document.pages_without_text == [2]
    markdown = local_path_of(document.markdown_uri).read_text()
    assert words_found(SCAN_LINES, markdown) >= 0.8, markdown
    assert markdown.rstrip().endswith(f"page 2 of 2 · read by rapidocr -->\n\n{NO_TEXT_FOUND}")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "no text" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{scan.as_uri()}: no text found on page(s) 2 (read by rapidocr)")
    assert NO_TEXT_FOUND in warnings[0] and "STACKFLOWS_OCR__SERVICE_URL" in warnings[0]


def test_a_rerun_after_a_failed_page_sends_only_the_missing_pages(fake_service: FakeOcrService, tmp_path: Path) -> None:
    scan = tmp_path / "in" / "scan.pdf"
    protocol = tmp_path / "in" / "protocol.pdf"
    scan.parent.mkdir()
    scan.write_bytes(scanned_pdf(5))
    protocol.write_bytes(text_pdf(PROTOCOL_LINES))
    uris = [protocol.as_uri(), scan.as_uri()]
    outputs = (tmp_path / "runs" / "run-1").as_uri()

    fake_service.always = {4: 500}
    with pytest.raises(OcrPageError, match="scan.pdf: page 4"):
        read_documents(uris, outputs)
    assert sorted(fake_service.attempts) == [1, 2, 3, 4]

    fake_service.always = {}  # the service is fixed; the user runs again
    documents = read_documents(uris, outputs)
    sent = {page: [status for _, status in tries] for page, tries in fake_service.attempts.items()}
    assert sent == {1: [200], 2: [200], 3: [200], 4: [500, 200], 5: [200]}  # pages 1-3 were not sent again

    protocol_text, scan_text = documents
    assert protocol_text.engines == {"text-layer": 2}
    assert scan_text.engines == {"lightonocr": 5} and scan_text.pages_from_cache == 3
    markdown = local_path_of(scan_text.markdown_uri).read_text()
    assert scan_text.markdown_uri.startswith(outputs + "/documents/")
    assert markdown.index("# Page 1") < markdown.index("# Page 5")
    assert "page 5 of 5 · read by lightonocr" in markdown

    again = read_documents(uris, outputs)  # same outputs, same text: reused, nothing overwritten
    assert [d.markdown_uri for d in again] == [d.markdown_uri for d in documents]
    assert fake_service.completed == 5


def test_bad_documents_fail_before_any_page_is_sent(fake_service: FakeOcrService, tmp_path: Path) -> None:
    scan = tmp_path / "scan.pdf"
    scan.write_bytes(scanned_pdf(2))
    notes = tmp_path / "notes.txt"
    notes.write_text("plain text notes")
    with pytest.raises(ValueError, match="notes.txt: not a PDF, PNG or JPEG"):
        read_documents([scan.as_uri(), notes.as_uri()], (tmp_path / "out").as_uri())
    with pytest.raises(FileNotFoundError, match="missing.pdf: document not found"):
        read_documents([(tmp_path / "missing.pdf").as_uri()], (tmp_path / "out").as_uri())
    assert fake_service.calls == 0
