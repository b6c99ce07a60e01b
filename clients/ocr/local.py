"""Local OCR for when no LightOnOCR service is configured: RapidOCR on the CPU, or nothing.

RapidOCR's wheel ships its ONNX models (PP-OCR det/cls/rec) and finds them by checksum, so it runs
offline. It gives plain text lines, not LightOnOCR's markdown, which is why every page says which
engine read it.

Two things RapidOCR does that shaped this module:
- Loading its three models takes a second or more, so one engine serves the whole process (every
  reader, task run and page), behind a lock: onnxruntime already uses every core for one page.
- When it detects no text it logs a warning (which ``log_level=error`` hides) and returns an empty
  result. An empty page is therefore not an error here; ``DocumentText.pages_without_text`` names it,
  the markdown marks it, and the OCR task warns.
"""

from __future__ import annotations

import functools
import importlib.metadata
import threading
from collections.abc import Iterable
from typing import Any

from clients.ocr.base import OcrEngine, OcrPageError, PageCallback, PageImage
from clients.ocr.models import PageText

NO_SERVICE_FIX = (
    "set STACKFLOWS_OCR__SERVICE_URL to the LightOnOCR service (docs/ocr.md shows how to deploy it)"
)

_rapidocr_lock = threading.Lock()


@functools.cache
def shared_rapidocr() -> Any:
    """The process's one RapidOCR engine, created on first use (call it holding ``_rapidocr_lock``)."""
    from rapidocr import RapidOCR

    return RapidOCR(params={"Global.log_level": "error"})


def _engine_for(page: PageImage) -> Any:
    """The shared engine, or an OcrPageError naming the page and what to install."""
    try:
        return shared_rapidocr()
    except ImportError as exc:
        raise OcrPageError(
            page.document, page.page_number,
            f"has no usable text layer, no OCR service is configured and the local engine is not "
            f"installed ({exc}); {NO_SERVICE_FIX}, or `pip install rapidocr onnxruntime`",
        ) from exc
    except Exception as exc:  # a missing or damaged model file: rapidocr would try to download it
        raise OcrPageError(
            page.document, page.page_number,
            f"the local OCR engine (rapidocr) could not load its models ({type(exc).__name__}: {exc}); "
            f"reinstall rapidocr (its wheel ships the models) or {NO_SERVICE_FIX}",
        ) from exc


def _lines(engine: Any, page: PageImage) -> list[str]:
    """The page's text lines, top to bottom; empty when RapidOCR found none.

    The page goes in as a PIL image, so RapidOCR converts RGB to the BGR its models expect (a numpy
    array is taken as BGR already). Its result has ``txts`` None when nothing was found.
    """
    try:
        output = engine(page.image)
    except Exception as exc:  # onnxruntime and OpenCV raise their own types
        raise OcrPageError(page.document, page.page_number, f"local OCR (rapidocr) failed: {exc}") from exc
    return [line.strip() for line in (getattr(output, "txts", None) or ()) if line.strip()]


class RapidOcrEngine(OcrEngine):
    """RapidOCR (onnxruntime, CPU): about a page a second or two on a laptop."""

    name = "rapidocr"

    def __init__(self, render_longest_side_px: int) -> None:
        self._render_px = render_longest_side_px

    def fingerprint(self) -> str:
        try:
            version = importlib.metadata.version("rapidocr")
        except importlib.metadata.PackageNotFoundError:
            version = "missing"
        return f"rapidocr|{version}|px={self._render_px}"

    def read_pages(self, pages: Iterable[PageImage], on_page: PageCallback | None = None) -> list[PageText]:
        results = []
        for page in pages:
            with _rapidocr_lock:
                lines = _lines(_engine_for(page), page)
            text = PageText(page_number=page.page_number, text="\n".join(lines), engine="rapidocr")
            results.append(text)
            if on_page is not None:
                on_page(text)
        return results


class NoOcrEngine(OcrEngine):
    """Chosen with ``STACKFLOWS_OCR__LOCAL_ENGINE=none``: image-only pages fail with what to do."""

    name = "lightonocr"  # what would have read them

    def fingerprint(self) -> str:
        return "none"

    def read_pages(self, pages: Iterable[PageImage], on_page: PageCallback | None = None) -> list[PageText]:
        for page in pages:
            raise OcrPageError(
                page.document, page.page_number,
                f"has no usable text layer and no OCR service is configured; {NO_SERVICE_FIX}, "
                "or set STACKFLOWS_OCR__LOCAL_ENGINE=rapidocr",
            )
        return []
