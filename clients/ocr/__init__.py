"""OCR: turn documents (PDF, PNG, JPEG) into page texts for the agent.

- ``DocumentReader`` reads one document: text layers directly, the rest through an engine.
- Engines (``OcrEngine``): ``LightOnOcrClient`` (LightOnOCR-2-1B on Cloud Run, cloud) and
  ``RapidOcrEngine`` (CPU, local default); ``engine_from_settings`` picks one.
- ``DocumentText`` / ``PageText``: what comes back, each page naming the engine that read it.
"""

from clients.ocr.base import OcrEngine, OcrError, OcrPageError, PageImage
from clients.ocr.documents import DocumentError, SourceDocument
from clients.ocr.lightonocr import LightOnOcrClient
from clients.ocr.local import NoOcrEngine, RapidOcrEngine
from clients.ocr.models import NO_TEXT_FOUND, DocumentText, PageText
from clients.ocr.reader import DocumentReader, PageCache, engine_from_settings, page_cache_key
from clients.ocr.settings import OcrSettings

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
    "engine_from_settings",
    "page_cache_key",
]

