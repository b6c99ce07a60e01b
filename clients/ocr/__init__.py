"""OCR: turn documents (PDF, PNG, JPEG) into page texts for the agent.

- ``DocumentReader`` reads one document: text layers directly, the rest through an engine.
- Engines (``OcrEngine``): ``LightOnOcrClient`` (LightOnOCR-2-1B on Cloud Run, cloud) and
  ``RapidOcrEngine`` (CPU, local default); ``engine_from_settings`` picks one.
- ``DocumentText`` / ``PageText``: what comes back, each page naming the engine that read it.

The readers and engines load on first use (PEP 562): they need pypdfium2, PIL, requests and
google-auth, which a run without documents never uses (~0.2 s of every flow run's start, since the
settings and the report's models import this package).
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from clients.ocr.models import NO_TEXT_FOUND, DocumentText, PageText, document_name
from clients.ocr.settings import OcrSettings

_LAZY = {
    "OcrEngine": "clients.ocr.base",
    "OcrError": "clients.ocr.base",
    "OcrPageError": "clients.ocr.base",
    "PageImage": "clients.ocr.base",
    "DocumentError": "clients.ocr.documents",
    "SourceDocument": "clients.ocr.documents",
    "LightOnOcrClient": "clients.ocr.lightonocr",
    "NoOcrEngine": "clients.ocr.local",
    "RapidOcrEngine": "clients.ocr.local",
    "DocumentReader": "clients.ocr.reader",
    "PageCache": "clients.ocr.reader",
    "engine_from_settings": "clients.ocr.reader",
    "page_cache_key": "clients.ocr.reader",
}

if TYPE_CHECKING:
    from clients.ocr.base import OcrEngine, OcrError, OcrPageError, PageImage
    from clients.ocr.documents import DocumentError, SourceDocument
    from clients.ocr.lightonocr import LightOnOcrClient
    from clients.ocr.local import NoOcrEngine, RapidOcrEngine
    from clients.ocr.reader import DocumentReader, PageCache, engine_from_settings, page_cache_key


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "NO_TEXT_FOUND",
    "DocumentError",
    "DocumentReader",
    "DocumentText",
    "LightOnOcrClient",
    "NoOcrEngine",
    "OcrEngine",
    "OcrError",
    "OcrPageError",
    "OcrSettings",
    "PageCache",
    "PageImage",
    "PageText",
    "RapidOcrEngine",
    "SourceDocument",
    "document_name",
    "engine_from_settings",
    "page_cache_key",
]
