"""Grounding settings (``STACKFLOWS_GROUNDING__*``): where the knowledge pack is, how scores combine."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

# The pack built by ``python -m deployments.knowledge_pack build`` and committed beside it.
DEFAULT_PACK_DIR = Path(__file__).resolve().parent.parent / "deployments" / "knowledge"


class GroundingSettings(BaseModel):
    pack_uri: str = Field(
        default_factory=lambda: DEFAULT_PACK_DIR.as_uri(),
        description="Folder (file:// or gs://) holding the knowledge pack's pack.json and the files it lists.",
    )
    gene_set_uris: list[str] = Field(
        default_factory=list, description="GMT files every run reads beside the pack (a request may add more)."
    )
    weights: dict[str, float] = Field(
        default_factory=lambda: {
            "pathway_coherence": 1.0,
            "target_activation": 1.0,
            "identity_preservation": 1.0,
            "document_support": 1.0,
            "backtest": 2.0,
        },
        description="Weight of each score component in the composite (assessed components only).",
    )
    min_set_size: int = Field(default=5, ge=1, description="Gene sets with fewer genes in the background are skipped.")
    max_set_size: int = Field(default=500, ge=1, description="Gene sets with more genes in the background are skipped.")
    top_de_genes: int = Field(
        default=200, ge=10, description="Most significant genes per direction that enrichment tests, at q < 0.05."
    )
    marker_genes: int = Field(default=20, ge=3, le=200, description="Query cell type markers identity checks.")
    offline_gene_sets: int = Field(
        default=3, ge=0, le=20, description="Gene sets the offline expectations take from name matching."
    )
