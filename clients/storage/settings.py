"""Object storage settings (``STACKFLOWS_STORAGE__*``)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class StorageSettings(BaseModel):
    root: str | None = Field(
        default=None,
        description="gs://bucket/prefix or file:///path. Unset: file:// under the data directory.",
    )
    project: str | None = Field(default=None, description="GCP project for the storage client.")
    chunk_size_mb: int = Field(
        default=16, ge=1, description="Resumable upload chunk size (rounded to 256 KiB multiples)."
    )
    read_ahead_mb: int = Field(
        default=512,
        ge=0,
        description=(
            "A large file staged to gs:// whose hash is not yet known is read into memory while it is "
            "hashed, up to this many MB, so the upload does not read it again. 0: hash, then read to upload."
        ),
    )
    retry_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="How long transient GCS errors (429, 5xx, dropped connections) are retried per call.",
    )
