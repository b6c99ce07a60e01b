"""The LightOnOCR client through requests/google-auth against loopback fakes of the service and Google identity."""

from __future__ import annotations

from pathlib import Path

import pytest

from clients.ocr import DocumentReader, LightOnOcrClient, OcrError, OcrPageError, PageText
from clients.ocr.auth import audience_of
from tests.fake_google_identity import SERVICE_ACCOUNT, FakeGoogleIdentity
from tests.fake_openai_ocr import FakeOcrService
from tests.ocr.conftest import PROTOCOL_LINES, joined_pdf, scanned_pdf, service_settings, text_pdf


def checked_by(identity: FakeGoogleIdentity, fake_url: str):
    """The fake service accepts only tokens the fake identity issued for the service's URL."""
    return lambda token: identity.accepts(token, audience_of(fake_url))


class DictCache:
    def __init__(self) -> None:
        self.pages: dict[str, PageText] = {}

    def get(self, key: str) -> PageText | None:
        return self.pages.get(key)

    def put(self, key: str, page: PageText) -> None:
        self.pages[key] = page


def test_scanned_pdf_comes_back_in_page_order_with_a_metadata_id_token(metadata_identity: FakeGoogleIdentity) -> None:
    with FakeOcrService(latency_s=0.05, capacity=2) as fake:
        fake.require_token = checked_by(metadata_identity, fake.url)
        reader = DocumentReader(service_settings(fake.url, concurrency=3))
        doc = reader.read(scanned_pdf(7), "gs://lab/protocol-scan.pdf")

    assert [p.page_number for p in doc.pages] == list(range(1, 8))
    assert [p.text.splitlines()[0] for p in doc.pages] == [f"# Page {n}" for n in range(1, 8)]
    assert doc.engines == {"lightonocr": 7}
    assert "page 4 of 7 · read by lightonocr" in doc.markdown()
    assert fake.completed == 7 and fake.max_in_flight <= 3  # never more in flight than configured
    assert fake.bodies[0]["model"] == "lightonai/LightOnOCR-2-1B"
    assert len(metadata_identity.issued) == 1  # one token for all pages, not one per request


def test_service_account_key_file_token(
    identity: FakeGoogleIdentity, service_account_key: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(service_account_key))
    with FakeOcrService() as fake:
        fake.require_token = checked_by(identity, fake.url)
        doc = DocumentReader(service_settings(fake.url)).read(scanned_pdf(2), "scan.pdf")
    assert [p.text.splitlines()[0] for p in doc.pages] == ["# Page 1", "# Page 2"]
    assert len(identity.issued) == 1


def test_a_rejected_token_is_refreshed_once_and_the_page_resent(metadata_identity: FakeGoogleIdentity) -> None:
    with FakeOcrService() as fake:
        accepts = checked_by(metadata_identity, fake.url)
        seen: list[str] = []

        def revoke_the_first_token(token: str) -> bool:
            if not seen:
                seen.append(token)
                metadata_identity.revoke_all()  # as if it had expired early
            return accepts(token)

        fake.require_token = revoke_the_first_token
        doc = DocumentReader(service_settings(fake.url, concurrency=1)).read(scanned_pdf(3), "scan.pdf")
    assert doc.engines == {"lightonocr": 3}
    assert len(metadata_identity.issued) == 2
    assert fake.unauthorized == 1 and fake.completed == 3


def test_429_is_retried_after_the_retry_after_delay(metadata_identity: FakeGoogleIdentity) -> None:
    with FakeOcrService(plan={2: [429]}, retry_after_s=1) as fake:
        doc = DocumentReader(service_settings(fake.url)).read(scanned_pdf(3), "scan.pdf")
    assert [p.text.splitlines()[0] for p in doc.pages] == ["# Page 1", "# Page 2", "# Page 3"]
    (first, status_first), (second, status_second) = fake.attempts[2]
    assert (status_first, status_second) == (429, 200)
    assert second - first >= 0.9  # waited as the service asked, not the 0.05 s backoff


def test_a_cold_start_burst_of_503s_is_waited_out(metadata_identity: FakeGoogleIdentity) -> None:
    """A scaled-to-zero Cloud Run service answers 503 while its instance starts; every page gets through."""
    with FakeOcrService(plan={1: [503, 503, 503], 2: [503, 503], 3: [503]}) as fake:
        doc = DocumentReader(service_settings(fake.url)).read(scanned_pdf(4), "scan.pdf")
    assert [p.text.splitlines()[0] for p in doc.pages] == [f"# Page {n}" for n in range(1, 5)]
    assert [status for _, status in fake.attempts[1]] == [503, 503, 503, 200]
    assert fake.completed == 4


def test_a_permanent_500_fails_naming_the_page_and_keeps_the_pages_before_it(
    metadata_identity: FakeGoogleIdentity,
) -> None:
    cache = DictCache()
    with FakeOcrService(always={3: 500}) as fake:
        reader = DocumentReader(service_settings(fake.url, concurrency=1))
        with pytest.raises(OcrPageError) as failure:
            reader.read(scanned_pdf(5), "gs://lab/notes.pdf", cache=cache)
    assert failure.value.page_number == 3
    assert "notes.pdf: page 3" in str(failure.value) and "500" in str(failure.value)
    assert len(fake.attempts[3]) == 1  # a 500 is not retried
    assert 4 not in fake.attempts and 5 not in fake.attempts  # nothing more was sent after the failure
    assert sorted(p.page_number for p in cache.pages.values()) == [1, 2]


def test_a_401_without_a_token_says_how_to_fix_it(identity: FakeGoogleIdentity) -> None:
    # No GOOGLE_APPLICATION_CREDENTIALS and no metadata server: google-auth finds no credentials.
    with FakeOcrService() as fake:
        fake.require_token = checked_by(identity, fake.url)
        with pytest.raises(OcrPageError) as failure:
            DocumentReader(service_settings(fake.url)).read(scanned_pdf(2), "scan.pdf")
    message = str(failure.value)
    assert failure.value.page_number == 1
    assert "no Google ID token was sent" in message
    assert "GOOGLE_APPLICATION_CREDENTIALS" in message and "roles/run.invoker" in message


def test_a_token_endpoint_that_refuses_fails_before_any_page_is_sent(
    identity: FakeGoogleIdentity, service_account_key: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = service_account_key.read_text().replace(identity.token_uri, identity.token_uri + "-wrong")
    service_account_key.write_text(key)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(service_account_key))
    with FakeOcrService() as fake:
        with pytest.raises(OcrError, match="could not get a Google ID token"):
            DocumentReader(service_settings(fake.url)).read(scanned_pdf(2), "scan.pdf")
    assert fake.calls == 0


def test_a_pdf_with_a_text_layer_makes_no_ocr_calls(metadata_identity: FakeGoogleIdentity) -> None:
    with FakeOcrService() as fake:
        doc = DocumentReader(service_settings(fake.url)).read(text_pdf(PROTOCOL_LINES), "protocol.pdf")
    assert fake.calls == 0 and metadata_identity.issued == []
    assert doc.engines == {"text-layer": 2}
    assert "IFN-beta" in doc.pages[1].text


def test_mixed_pdf_sends_only_its_scanned_pages_and_the_text_layer_can_be_turned_off(
    metadata_identity: FakeGoogleIdentity,
) -> None:
    mixed = joined_pdf(text_pdf(PROTOCOL_LINES[:1]), scanned_pdf(3))  # page 1 text, pages 2-4 scans
    with FakeOcrService() as fake:
        doc = DocumentReader(service_settings(fake.url)).read(mixed, "mixed.pdf")
        assert fake.calls == 3
        assert [p.engine for p in doc.pages] == ["text-layer", "lightonocr", "lightonocr", "lightonocr"]
        everything = DocumentReader(service_settings(fake.url, use_text_layer=False)).read(mixed, "mixed.pdf")
        assert fake.calls == 3 + 4
    assert everything.engines == {"lightonocr": 4}


def test_cached_pages_are_not_sent_again(metadata_identity: FakeGoogleIdentity) -> None:
    cache = DictCache()
    pdf = scanned_pdf(4)
    with FakeOcrService() as fake:
        first = DocumentReader(service_settings(fake.url)).read(pdf, "scan.pdf", cache=cache)
        again = DocumentReader(service_settings(fake.url)).read(pdf, "scan.pdf", cache=cache)
        assert fake.calls == 4
        other_settings = DocumentReader(service_settings(fake.url, max_tokens=2048))
        with pytest.raises(OcrPageError):  # the fake insists on LightOn's max_tokens: proves it was sent
            other_settings.read(pdf, "scan.pdf", cache=cache)
    assert again.pages == first.pages and again.pages_from_cache == 4


def test_images_are_read_as_one_page(metadata_identity: FakeGoogleIdentity) -> None:
    import io

    from tests.fake_openai_ocr import marked_page

    png = io.BytesIO()
    marked_page(5, size=(2400, 3000)).save(png, "PNG")
    with FakeOcrService() as fake:
        doc = DocumentReader(service_settings(fake.url)).read(png.getvalue(), "file:///lab/whiteboard.png")
    assert doc.media_type == "image/png"
    assert [p.text.splitlines()[0] for p in doc.pages] == ["# Page 5"]


def test_client_refuses_to_start_without_a_service_url() -> None:
    from clients.ocr import OcrSettings

    with pytest.raises(ValueError, match="STACKFLOWS_OCR__SERVICE_URL"):
        LightOnOcrClient(OcrSettings())


def test_service_account_email_is_named_in_a_403(metadata_identity: FakeGoogleIdentity) -> None:
    with FakeOcrService(always={1: 403}) as fake:
        with pytest.raises(OcrPageError) as failure:
            DocumentReader(service_settings(fake.url)).read(scanned_pdf(1), "scan.pdf")
    assert SERVICE_ACCOUNT in str(failure.value) and "roles/run.invoker" in str(failure.value)


def test_a_token_near_expiry_is_renewed_while_pages_keep_flowing(metadata_identity: FakeGoogleIdentity) -> None:
    metadata_identity.lifetime_s = 200  # inside google-auth's 3 min 45 s refresh window from the start
    with FakeOcrService() as fake:
        fake.require_token = checked_by(metadata_identity, fake.url)
        doc = DocumentReader(service_settings(fake.url, concurrency=1)).read(scanned_pdf(4), "scan.pdf")
    assert doc.engines == {"lightonocr": 4} and fake.unauthorized == 0
    assert len(metadata_identity.issued) >= 2  # renewed in the background, the old token still used meanwhile


def test_a_cold_page_slower_than_the_read_timeout_is_sent_once_and_reported_as_a_timeout(
    metadata_identity: FakeGoogleIdentity,
) -> None:
    """urllib3 must not resend a timed-out page (that waited three read timeouts, then said "could not reach")."""
    with FakeOcrService(stall={1}) as fake:
        settings = service_settings(fake.url, cold_start_timeout_s=0.4, max_retries=3)
        with pytest.raises(OcrPageError) as failure:
            DocumentReader(settings).read(scanned_pdf(1), "scan.pdf")
        sent = len(fake.attempts[1])
    message = str(failure.value)
    assert sent == 1
    assert "scan.pdf: page 1" in message and "timed out after 0.4 s" in message
    assert "STACKFLOWS_OCR__COLD_START_TIMEOUT_S" in message  # the first page waits for a cold start
    assert "SERVICE_URL" not in message and "could not reach" not in message
    assert failure.value.retryable  # the task may try once more, later, when the instance may be warm


def test_a_warm_page_that_times_out_names_the_request_timeout(metadata_identity: FakeGoogleIdentity) -> None:
    with FakeOcrService(stall={2}) as fake:
        settings = service_settings(fake.url, concurrency=1, request_timeout_s=0.3, cold_start_timeout_s=30)
        with pytest.raises(OcrPageError) as failure:
            DocumentReader(settings).read(scanned_pdf(2), "scan.pdf")
        sent = len(fake.attempts[2])
    assert sent == 1 and failure.value.page_number == 2
    assert "timed out after 0.3 s" in str(failure.value) and "STACKFLOWS_OCR__REQUEST_TIMEOUT_S" in str(failure.value)
