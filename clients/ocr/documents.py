"""Open a document (PDF, PNG or JPEG) from its bytes: count pages, read text layers, render pages.

Everything here runs before any OCR call, so a bad input fails with its name and a fix before GPU time
is spent. pdfium is not thread-safe: one thread opens, reads and renders a document.
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
import pypdfium2 as pdfium
from PIL import Image, ImageOps, UnidentifiedImageError

MediaType = Literal["application/pdf", "image/png", "image/jpeg"]

PDF_DPI_SCALE = 200 / 72  # LightOnOCR was trained on pages rendered at about 200 DPI
RENDER_RECIPE = "2"  # bump when rendering changes what an engine sees (2: transparency on paper)


class DocumentError(ValueError):
    """A document cannot be read: says which one, why, and what to do."""


def sniff_media_type(data: bytes, name: str) -> MediaType:
    """The document's type from its first bytes (file names and extensions are not trusted)."""
    if data.startswith(b"%PDF-") or data[:1024].find(b"%PDF-") != -1:
        return "application/pdf"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    raise DocumentError(
        f"{name}: not a PDF, PNG or JPEG (starts with {data[:8]!r}); convert it to PDF or PNG and try again"
    )


class SourceDocument:
    """One opened document. Use as a context manager so pdfium's handles are released."""

    def __init__(self, data: bytes, name: str, max_pages: int) -> None:
        self.name = name
        self.media_type = sniff_media_type(data, name)
        self._pdf: pdfium.PdfDocument | None = None
        self._image: Image.Image | None = None
        if self.media_type == "application/pdf":
            try:
                self._pdf = pdfium.PdfDocument(data)
            except pdfium.PdfiumError as exc:
                raise DocumentError(
                    f"{name}: the PDF cannot be opened ({exc}); if it is password-protected or damaged, "
                    "save an unprotected copy (e.g. print to PDF) and use that"
                ) from exc
            self.page_count = len(self._pdf)
        else:
            try:
                image = Image.open(io.BytesIO(data))
                image.load()
                self._image = on_paper(ImageOps.exif_transpose(image))
            except Image.DecompressionBombError as exc:
                raise DocumentError(
                    f"{name}: the image is too large to decode ({exc}); downscale it or save it as a PDF"
                ) from exc
            except UnidentifiedImageError as exc:
                raise DocumentError(
                    f"{name}: the image cannot be decoded (not a PNG or JPEG Pillow can read); re-export it as PNG"
                ) from exc
            except Exception as exc:  # noqa: BLE001 - Pillow reports damage as OSError, SyntaxError, ValueError...
                raise DocumentError(
                    f"{name}: the image cannot be decoded ({type(exc).__name__}: {exc}); re-export it as PNG"
                ) from exc
            self.page_count = 1
        if self.page_count == 0:
            self.close()
            raise DocumentError(f"{name}: the PDF has no pages")
        if self.page_count > max_pages:
            self.close()
            raise DocumentError(
                f"{name}: {self.page_count} pages, more than the limit of {max_pages}; split the document "
                "or raise STACKFLOWS_OCR__MAX_PAGES"
            )

    def __enter__(self) -> SourceDocument:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pdf is not None:
            self._pdf.close()
            self._pdf = None

    def text_layer(self, index: int) -> str:
        """The text a PDF page carries (empty for images and scanned pages)."""
        if self._pdf is None:
            return ""
        page = self._pdf[index]
        try:
            textpage = page.get_textpage()
            try:
                return textpage.get_text_bounded()
            finally:
                textpage.close()
        finally:
            page.close()

    def render(self, index: int, longest_side_px: int) -> Image.Image:
        """Page ``index`` as an RGB image whose longest side is at most ``longest_side_px``.

        PDF pages render at 200 DPI capped to that size (LightOn's recipe); images are only shrunk.
        """
        if self._image is not None:
            image = self._image.copy()
            image.thumbnail((longest_side_px, longest_side_px), Image.Resampling.LANCZOS)
            return image
        assert self._pdf is not None
        page = self._pdf[index]
        try:
            width, height = page.get_size()
            scale = min(PDF_DPI_SCALE, longest_side_px / max(width, height))
            bitmap = page.render(scale=scale)
            try:
                return bitmap.to_pil().convert("RGB")
            finally:
                bitmap.close()
        finally:
            page.close()


def on_paper(image: Image.Image) -> Image.Image:
    """The image as RGB on an opaque background, which is what OCR models were trained on.

    ``convert("RGB")`` drops alpha, and the pixels under a transparent background are usually black:
    a PNG of black ink on a transparent background became a black page, and OCR found nothing. Ink is
    laid on white paper, or on black if the ink itself is light (RapidOCR's own rule for images it loads).
    """
    if image.mode not in ("RGBA", "LA", "PA") and "transparency" not in image.info:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    sample = rgba.resize((min(rgba.width, 512), min(rgba.height, 512)), Image.Resampling.NEAREST)
    ink = np.asarray(sample.convert("L"))[np.asarray(sample.getchannel("A")) > 0]
    paper = (0, 0, 0, 255) if ink.size and ink.mean() >= 128 else (255, 255, 255, 255)
    return Image.alpha_composite(Image.new("RGBA", rgba.size, paper), rgba).convert("RGB")


def usable_text(text: str, min_chars: int) -> bool:
    """Whether a text layer is worth using: enough visible characters, few undecodable ones.

    PDFs with fonts lacking a Unicode map yield U+FFFD or control characters; such a layer is
    worse than OCR, so it does not count.
    """
    visible = [ch for ch in text if not ch.isspace()]
    if len(visible) < min_chars:
        return False
    garbage = sum(1 for ch in visible if ch == "\ufffd" or not ch.isprintable())
    return garbage <= 0.1 * len(visible)
