"""GPU batch job settings (``STACKFLOWS_BATCH__*``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class BatchSettings(BaseModel):
    backend: Literal["local", "cloud"] = Field(
        default="local", description="local: a process on this machine; cloud: Google Cloud Batch."
    )
