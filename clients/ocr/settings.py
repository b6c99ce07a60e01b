"""OCR settings (``STACKFLOWS_OCR__*``): where the LightOnOCR service is and how hard to push it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator


class OcrSettings(BaseModel):
    service_url: str | None = Field(
        default=None,
        description=(
            "Base URL of the LightOnOCR service (Cloud Run URL, or any vLLM OpenAI-compatible server). "
            "Unset: pages without a text layer are read by the local engine."
        ),
    )
    model: str = Field(default="lightonai/LightOnOCR-2-1B", description="Model name the service serves.")
    id_token: bool = Field(
        default=True,
        description=(
            "Send a Google ID token (audience = service URL) as Cloud Run requires with "
            "--no-allow-unauthenticated. Turn off for a vLLM server you run without auth."
        ),
    )
    concurrency: int = Field(
        default=32, ge=1, le=256, description="Pages in flight at once (LightOn's own client keeps 64)."
    )
    connect_timeout_s: float = Field(default=10.0, gt=0, description="TCP/TLS connect timeout per request.")
    request_timeout_s: float = Field(
        default=300.0, gt=0, description="Read timeout per page once the service has answered once."
    )
    cold_start_timeout_s: float = Field(
        default=900.0,
        gt=0,
        description="Read timeout until the first page succeeds: a scaled-to-zero GPU service loads vLLM first.",
    )
    max_retries: int = Field(
        default=8, ge=0, description="Retries per page for 429/502/503/504 and connection errors."
    )
    backoff_s: float = Field(
        default=1.0, ge=0, description="Backoff factor (doubles per retry) when no Retry-After is given."
    )
    backoff_max_s: float = Field(default=60.0, ge=0, description="Longest wait between two retries.")
    temperature: float = Field(default=0.2, ge=0, description="Sampling temperature LightOn recommends.")
    top_p: float = Field(default=0.9, gt=0, le=1)
    max_tokens: int = Field(default=4096, ge=1, description="Upper bound on the markdown tokens per page.")
    render_longest_side_px: int = Field(
        default=1540, ge=64, le=10000, description="Pages are rendered (at most 200 DPI) to this longest side."
    )
    use_text_layer: bool = Field(
        default=True, description="Read PDF pages that carry a usable text layer directly (no OCR call)."
    )
    min_text_layer_chars: int = Field(
        default=32, ge=1, description="Visible characters a page's text layer needs to count as usable."
    )
    max_pages: int = Field(default=300, ge=1, description="Pages one document may have (checked before any OCR).")
    local_engine: Literal["rapidocr", "none"] = Field(
        default="rapidocr",
        description=(
            "What reads image-only pages when no service_url is set: RapidOCR (CPU, model shipped in the "
            "package; plain text, no markdown) or none (such pages fail with instructions)."
        ),
    )

    @field_validator("service_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip().rstrip("/")
        if not value.startswith(("https://", "http://")):
            raise ValueError(
                f"service_url {value!r} must be an http(s) URL such as https://lightonocr-xyz-ew.a.run.app"
            )
        return value
