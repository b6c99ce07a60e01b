"""Read a whole document: text layers where usable, cached pages where known, the engine for the rest.

Usage::

    reader = DocumentReader(get_settings().ocr)
    doc = reader.read(pdf_bytes, "gs://bucket/protocol.pdf", cache=my_page_cache)
    doc.markdown()

The engine is chosen in one place (``engine_from_settings``) and only created when some page needs
OCR, so a PDF whose pages all have text never talks to the service (nor fetches a token).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from typing import Protocol

from google.auth.credentials import Credentials

from clients.ocr.base import OcrEngine, PageImage
from clients.ocr.documents import RENDER_RECIPE, SourceDocument, usable_text
from clients.ocr.lightonocr import LightOnOcrClient
from clients.ocr.local import NoOcrEngine, RapidOcrEngine
from clients.ocr.models import DocumentText, PageText, document_name
from clients.ocr.settings import OcrSettings

log = logging.getLogger(__name__)


class PageCache(Protocol):
    """Where finished pages are kept between attempts (the Prefect task backs it with its result store)."""

    def get(self, key: str) -> PageText | None: ...

    def put(self, key: str, page: PageText) -> None: ...


def engine_from_settings(settings: OcrSettings, credentials: Credentials | None = None) -> OcrEngine:
    """The LightOnOCR service when a URL is set, else the configured local engine."""
    if settings.service_url:
        return LightOnOcrClient(settings, credentials=credentials)
    if settings.local_engine == "rapidocr":
        return RapidOcrEngine(settings.render_longest_side_px)
    return NoOcrEngine()


def page_cache_key(document_sha256: str, page_index: int, engine_fingerprint: str) -> str:
    """Same document bytes, same page, same rendering and engine settings: same text. Not the URL.

    ``RENDER_RECIPE`` is part of it so pages read from a wrongly rendered image (transparent PNGs
    were black) are read again rather than taken from an earlier run's cache.
    """
    material = f"{document_sha256}:{page_index}:{RENDER_RECIPE}:{engine_fingerprint}".encode()
    return "ocr-page-" + hashlib.sha256(material).hexdigest()


class DocumentReader:
    """Turns document bytes into a DocumentText, sending only the pages that need OCR."""

    def __init__(self, settings: OcrSettings, engine: OcrEngine | None = None) -> None:
        self._settings = settings
        self._engine = engine

    @property
    def engine(self) -> OcrEngine:
        if self._engine is None:
            self._engine = engine_from_settings(self._settings)
        return self._engine

    def check(self, data: bytes, uri: str) -> int:
        """Open the document as reading will (type, damage, page limit); returns its page count."""
        with SourceDocument(data, uri, self._settings.max_pages) as doc:
            return doc.page_count

    def read(self, data: bytes, uri: str, cache: PageCache | None = None) -> DocumentText:
        settings = self._settings
        sha = hashlib.sha256(data).hexdigest()
        name = document_name(uri)
        with SourceDocument(data, uri, settings.max_pages) as doc:
            pages: dict[int, PageText] = {}
            need_ocr: list[int] = []
            for index in range(doc.page_count):
                text = doc.text_layer(index) if settings.use_text_layer else ""
                if text and usable_text(text, settings.min_text_layer_chars):
                    pages[index + 1] = PageText(page_number=index + 1, text=text, engine="text-layer")
                else:
                    need_ocr.append(index)

            from_cache = 0
            if need_ocr:
                fingerprint = self.engine.fingerprint()
                keys = {index + 1: page_cache_key(sha, index, fingerprint) for index in need_ocr}
                if cache is not None:
                    for number, key in keys.items():
                        if (hit := cache.get(key)) is not None:
                            pages[number] = hit
                            from_cache += 1
                missing = [index for index in need_ocr if index + 1 not in pages]

                def rendered() -> Iterator[PageImage]:  # lazily, in this thread: pdfium is single-threaded
                    for index in missing:
                        yield PageImage(name, index + 1, doc.render(index, settings.render_longest_side_px))

                def keep(page: PageText) -> None:
                    if cache is not None:
                        cache.put(keys[page.page_number], page)

                if missing:
                    for page in self.engine.read_pages(rendered(), on_page=keep):
                        pages[page.page_number] = page
            log.info(
                "%s: %d page(s): %d from the text layer, %d cached, %d read by %s",
                name, doc.page_count, doc.page_count - len(need_ocr), from_cache,
                len(need_ocr) - from_cache, self._engine.name if self._engine else "-",
            )
            return DocumentText(
                uri=uri,
                sha256=sha,
                media_type=doc.media_type,
                pages=[pages[number] for number in sorted(pages)],
                pages_from_cache=from_cache,
            )
