"""OCR service settings (``STACKFLOWS_OCR__*``)."""

from __future__ import annotations

from pydantic import BaseModel


class OcrSettings(BaseModel):
    pass
