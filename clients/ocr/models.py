"""What OCR gives back: the text of each page and which engine read it."""

from __future__ import annotations

from collections import Counter
from typing import Literal

from pydantic import BaseModel, Field

Engine = Literal["text-layer", "lightonocr", "rapidocr"]
"""text-layer: the PDF's own text; lightonocr: the GPU service (markdown); rapidocr: local CPU OCR (plain lines)."""

NO_TEXT_FOUND = "[no text found on this page]"
"""What the markdown says for a page where OCR found nothing (blank, a photo, or unreadable)."""


def document_name(uri: str) -> str:
    """The name a document goes by in logs, tools, claims and citations: its file name."""
    return uri.rstrip("/").rsplit("/", 1)[-1] or uri


class PageText(BaseModel):
    page_number: int = Field(ge=1, description="1-based, as a reader counts pages.")
    text: str
    engine: Engine


class DocumentText(BaseModel):
    """One document's pages, in page order, and where its markdown was stored."""

    uri: str = Field(description="The document as given.")
    sha256: str = Field(description="Content hash of the document's bytes.")
    media_type: Literal["application/pdf", "image/png", "image/jpeg"]
    pages: list[PageText]
    markdown_uri: str | None = Field(default=None, description="Where the document's markdown was written.")
    pages_from_cache: int = Field(default=0, ge=0, description="OCR pages taken from an earlier attempt.")

    @property
    def engines(self) -> dict[str, int]:
        """Pages per engine, e.g. ``{"text-layer": 3, "lightonocr": 2}``."""
        return dict(Counter(page.engine for page in self.pages))

    @property
    def pages_without_text(self) -> list[int]:
        """Page numbers where no engine found any text: a caveat in the report, never silent."""
        return [page.page_number for page in self.pages if not page.text.strip()]

    def markdown(self) -> str:
        """All pages, each headed by a comment that says which page it is and what read it.

        A page with no text says so in words (``NO_TEXT_FOUND``): a reader, or the agent, must not
        take a page that was not read for a page that says nothing.
        """
        name = self.uri.rstrip("/").rsplit("/", 1)[-1]
        parts = [
            f"<!-- {name} · page {page.page_number} of {len(self.pages)} · read by {page.engine} -->\n\n"
            f"{page.text.strip() or NO_TEXT_FOUND}\n"
            for page in self.pages
        ]
        return "\n".join(parts)
