"""The OCR engine interface: page images in, page texts out, in page order.

An engine reads pages that need OCR (those without a usable text layer). Implementations:
``LightOnOcrClient`` (the GPU service, cloud) and ``RapidOcrEngine`` (CPU, local default).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from PIL import Image

from clients.ocr.models import Engine, PageText


@dataclass(frozen=True)
class PageImage:
    """One rendered page on its way to an engine."""

    document: str  # the document's name, for error messages
    page_number: int  # 1-based
    image: Image.Image


class OcrError(RuntimeError):
    """OCR failed in a way retrying will not fix; the message names the input and the fix."""


class OcrPageError(OcrError):
    """One page could not be read. ``retryable``: a later attempt may succeed (service busy or starting)."""

    def __init__(self, document: str, page_number: int, reason: str, retryable: bool = False) -> None:
        self.document = document
        self.page_number = page_number
        self.reason = reason
        self.retryable = retryable
        super().__init__(f"{document}: page {page_number}: {reason}")


PageCallback = Callable[[PageText], None]


class OcrEngine(ABC):
    """Reads page images. ``fingerprint`` names everything that changes its output (for caching)."""

    name: Engine

    @abstractmethod
    def fingerprint(self) -> str:
        """Engine, model and generation settings; part of every cached page's key."""

    @abstractmethod
    def read_pages(self, pages: Iterable[PageImage], on_page: PageCallback | None = None) -> list[PageText]:
        """Read ``pages`` (consumed lazily, so rendering overlaps reading) and return them in order.

        ``on_page`` is called in the caller's thread as each page finishes, in finishing order,
        so finished pages can be kept even if a later page fails.
        Raises OcrPageError naming the first page that failed for good.
        """
