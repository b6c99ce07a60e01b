"""Which STACK model a run uses: checkpoint, gene list and how much gene overlap inputs need."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ModelSettings(BaseModel):
    checkpoint_uri: str | None = Field(
        default=None,
        description="STACK checkpoint (file:// or gs://). Unset: the demo builds a small untrained one.",
    )
    gene_list_uri: str | None = Field(
        default=None,
        description="Pickled list of upper-case gene symbols the model was trained on.",
    )
    min_gene_overlap: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Fraction of the model's genes an input must contain.",
    )
