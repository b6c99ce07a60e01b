"""HTTP API settings (``STACKFLOWS_API__*``): the token, which deployment runs, and what the API accepts."""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr


class ApiSettings(BaseModel):
    token: SecretStr | None = Field(
        default=None,
        description=(
            "Bearer token every call but /healthz must send. Required: the API refuses to start without it."
        ),
    )
    deployment: str = Field(
        default="analysis-run/local",
        description="Deployment that POST /runs triggers, as '<flow name>/<deployment name>'.",
    )
    public_url: str | None = Field(
        default=None,
        description=(
            "Base URL at which browsers reach this API (e.g. https://stackflows.example.org). Run outputs "
            "(report HTML, plot, predictions) are linked from the Prefect UI as signed URLs under it; "
            "unset: artifacts show the storage URIs instead. The worker needs it, and the token, to sign."
        ),
    )
    output_link_secret: SecretStr | None = Field(
        default=None,
        description=(
            "Key that signs output links, the same on the API and the worker. Unset: derived from the token. "
            "Set it to give workers a key that can only open run outputs, instead of the API token."
        ),
    )
    output_link_ttl_s: int = Field(
        default=30 * 24 * 3600,
        ge=60,
        description="How long a signed output link stays valid; Prefect keeps the artifacts that carry it.",
    )
    default_idempotency_window_s: int = Field(
        default=3600,
        ge=1,
        description=(
            "Without an Idempotency-Key header, a repeated request returns the run it started if that run "
            "is younger than this; after it, the same request starts a new run."
        ),
    )
    ui_url: str | None = Field(
        default=None,
        description="Prefect UI base URL for run links; unset: Prefect's PREFECT_UI_URL.",
    )
    trigger_concurrency: int = Field(
        default=1,
        ge=1,
        description=(
            "Flow runs POST /runs creates at once through Prefect's API; further requests wait their turn. "
            "A Prefect server on SQLite refuses concurrent writes ('database is locked', 503) and its "
            "client retries after 2, 4, 8... s, so one at a time is fastest there (benchmarks/api.py). "
            "Raise it for Prefect Cloud or a server on PostgreSQL."
        ),
    )
    max_body_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description="Largest request body accepted (requests carry URIs, never data).",
    )
    allowed_uri_prefixes: list[str] | None = Field(
        default=None,
        description=(
            "URIs a request may name (file:// or local directories, gs://bucket/prefix). "
            "Unset: the data directory and the storage root."
        ),
    )
