"""Local OCR for when no LightOnOCR service is configured: RapidOCR on the CPU, or nothing.

RapidOCR's wheel ships its ONNX models (PP-OCR det/cls/rec), so it runs offline. It gives plain text
lines, not LightOnOCR's markdown, which is why every page says which engine read it.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable
from typing import Any

import numpy as np

from clients.ocr.base import OcrEngine, OcrPageError, PageCallback, PageImage
from clients.ocr.models import PageText

NO_SERVICE_FIX = (
    "set STACKFLOWS_OCR__SERVICE_URL to the LightOnOCR service (docs/ocr.md shows how to deploy it)"
)


class RapidOcrEngine(OcrEngine):
    """RapidOCR (onnxruntime, CPU): about a page every few seconds on a laptop core."""

    name = "rapidocr"

    def __init__(self, render_longest_side_px: int) -> None:
        self._render_px = render_longest_side_px
        self._engine: Any = None

    def fingerprint(self) -> str:
        try:
            version = importlib.metadata.version("rapidocr")
        except importlib.metadata.PackageNotFoundError:
            version = "missing"
        return f"rapidocr|{version}|px={self._render_px}"

    def _load(self, first: PageImage) -> Any:
        if self._engine is None:
            try:
                from rapidocr import RapidOCR
            except ImportError as exc:
                raise OcrPageError(
                    first.document, first.page_number,
                    f"has no usable text layer, no OCR service is configured and the local engine is not "
                    f"installed ({exc}); {NO_SERVICE_FIX}, or `pip install rapidocr onnxruntime`",
                ) from exc
            self._engine = RapidOCR(params={"Global.log_level": "error"})
        return self._engine

    def read_pages(self, pages: Iterable[PageImage], on_page: PageCallback | None = None) -> list[PageText]:
        results = []
        for page in pages:
            engine = self._load(page)
            try:
                output = engine(np.asarray(page.image))
            except Exception as exc:  # onnxruntime and OpenCV raise their own types
                raise OcrPageError(page.document, page.page_number, f"local OCR (rapidocr) failed: {exc}") from exc
            lines = list(output.txts or ())
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
