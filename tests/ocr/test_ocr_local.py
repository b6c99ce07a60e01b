"""Without a LightOnOCR service: text layers, RapidOCR for image pages (offline), and clear input errors."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageDraw

from clients.ocr import DocumentError, DocumentReader, OcrPageError, OcrSettings
from tests.ocr.conftest import PROTOCOL_LINES, scanned_pdf, text_pdf


def photo_of_a_note(lines: list[str]) -> bytes:
    image = Image.new("RGB", (1400, 120 + 110 * len(lines)), "white")
    draw = ImageDraw.Draw(image)
    for row, line in enumerate(lines):
        draw.text((60, 60 + 110 * row), line, fill="black", font_size=56)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_image_pages_are_read_by_the_local_engine_and_say_so() -> None:
    doc = DocumentReader(OcrSettings()).read(photo_of_a_note(["Thaw cells at 37 C", "Count twice"]), "note.jpg")
    assert doc.media_type == "image/jpeg"
    assert doc.engines == {"rapidocr": 1}
    assert "Thaw cells" in doc.pages[0].text and "Count twice" in doc.pages[0].text
    assert "read by rapidocr" in doc.markdown()


def test_text_layer_pages_need_no_engine_at_all() -> None:
    reader = DocumentReader(OcrSettings(local_engine="none"))
    doc = reader.read(text_pdf(PROTOCOL_LINES), "protocol.pdf")
    assert doc.engines == {"text-layer": 2}


def test_without_service_or_local_engine_image_pages_fail_saying_what_to_set() -> None:
    with pytest.raises(OcrPageError) as failure:
        DocumentReader(OcrSettings(local_engine="none")).read(scanned_pdf(2), "gs://lab/scan.pdf")
    assert failure.value.page_number == 1
    assert "scan.pdf: page 1" in str(failure.value) and "STACKFLOWS_OCR__SERVICE_URL" in str(failure.value)


def test_a_file_that_is_not_a_document_is_named_with_a_fix() -> None:
    with pytest.raises(DocumentError, match=r"notes\.docx: not a PDF, PNG or JPEG.*convert it"):
        DocumentReader(OcrSettings()).check(b"PK\x03\x04 word document", "gs://lab/notes.docx")


def test_a_damaged_pdf_is_named_with_a_fix() -> None:
    with pytest.raises(DocumentError, match=r"broken\.pdf: the PDF cannot be opened"):
        DocumentReader(OcrSettings()).check(b"%PDF-1.7\n garbage", "broken.pdf")


def test_a_document_over_the_page_limit_is_refused_before_reading() -> None:
    with pytest.raises(DocumentError, match=r"3 pages, more than the limit of 2.*STACKFLOWS_OCR__MAX_PAGES"):
        DocumentReader(OcrSettings(max_pages=2)).check(scanned_pdf(3), "long.pdf")


def test_service_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="must be an http"):
        OcrSettings(service_url="lightonocr.run.app")
