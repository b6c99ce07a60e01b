"""Without a LightOnOCR service: text layers, RapidOCR for image pages (offline), and clear input errors."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageDraw

import rapidocr
from clients.ocr import NO_TEXT_FOUND, DocumentError, DocumentReader, OcrPageError, OcrSettings
from clients.ocr.documents import SourceDocument
from clients.ocr.local import shared_rapidocr
from tests.ocr.conftest import (
    PROTOCOL_LINES,
    SCAN_LINES,
    blank_page,
    image_only_pdf,
    ink_on_transparent,
    png_bytes,
    scanned_pdf,
    text_pdf,
    typed_page,
    words_found,
)


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


@pytest.mark.parametrize("kind", ["png", "image-only pdf"])
def test_a_scanned_page_comes_back_with_its_words(kind: str) -> None:
    page = typed_page(SCAN_LINES)
    data = png_bytes(page) if kind == "png" else image_only_pdf(page)
    if kind == "image-only pdf":
        with SourceDocument(data, "scan.pdf", max_pages=1) as doc:
            assert doc.text_layer(0) == ""  # nothing to read but the pixels
    doc = DocumentReader(OcrSettings()).read(data, f"scan.{kind[-3:]}")
    assert doc.engines == {"rapidocr": 1} and doc.pages_without_text == []
    assert words_found(SCAN_LINES, doc.pages[0].text) >= 0.8, doc.pages[0].text


def test_ink_on_a_transparent_background_is_read_on_white_paper() -> None:
    # Pillow's convert("RGB") drops alpha; the transparent pixels are black underneath, so this page
    # reached the engine as a black rectangle and came back empty.
    doc = DocumentReader(OcrSettings()).read(png_bytes(ink_on_transparent(typed_page(SCAN_LINES))), "cutout.png")
    assert words_found(SCAN_LINES, doc.pages[0].text) >= 0.8, doc.pages[0].text


def test_a_page_with_no_text_is_named_and_marked_never_passed_on_empty() -> None:
    doc = DocumentReader(OcrSettings()).read(image_only_pdf(typed_page(SCAN_LINES), blank_page()), "scan.pdf")
    assert doc.pages_without_text == [2]
    page_1, page_2 = doc.markdown().split("<!-- scan.pdf · page 2 of 2 · read by rapidocr -->")
    assert words_found(SCAN_LINES, page_1) >= 0.8 and NO_TEXT_FOUND not in page_1
    assert page_2.strip() == NO_TEXT_FOUND


def test_one_rapidocr_engine_serves_every_reader_and_page(monkeypatch: pytest.MonkeyPatch) -> None:
    created: list[object] = []

    class CountedRapidOCR(rapidocr.RapidOCR):
        def __init__(self, *args: object, **kwargs: object) -> None:
            created.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(rapidocr, "RapidOCR", CountedRapidOCR)
    shared_rapidocr.cache_clear()  # as in a fresh process
    try:
        scan = png_bytes(typed_page(SCAN_LINES[:1]))
        for attempt in range(2):  # two task runs, each with its own reader
            doc = DocumentReader(OcrSettings()).read(scan, f"scan-{attempt}.png")
            assert doc.pages_without_text == []
        assert len(created) == 1
    finally:
        shared_rapidocr.cache_clear()  # later tests load the real class again


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
