"""The grounding's contracts: what the question predicts, and how well a prediction agrees with it.

``Expectations`` are fixed once per run (the yardstick never moves between rounds); a
``GroundingEvaluation`` is computed by code from the job's DE table and summary against them.
Every score says what it was computed from, and the pack and formula versions it used.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from clients.llm.usage import AgentUsage

Direction = Literal["up", "down"]
# Who said so: the request, a model (Claude with the pack-search tools), the offline name matcher,
# or a claim in one of the request's documents.
Source = Literal["request", "model", "offline", "document"]
ComponentName = Literal[
    "pathway_coherence", "target_activation", "identity_preservation", "document_support", "backtest"
]
# Bump when a score's formula changes: a score is only comparable with one of the same version.
FORMULA_VERSION = "grounding-1"


class ExpectedGene(BaseModel):
    gene: str
    direction: Direction
    source: Source
    why: str = ""


class ExpectedGeneSet(BaseModel):
    set_id: str = Field(description="The pack's id: a GO id, or '<gmt name>:<set name>' for a user GMT.")
    name: str
    direction: Direction
    source: Source
    genes: int = Field(description="Genes in the set (before the background).")
    why: str = ""


class CellTypeTerm(BaseModel):
    """The query cell type, resolved to the Cell Ontology."""

    ontology_id: str = Field(description="CL:0000000 style.")
    label: str
    matched: str = Field(description="The text that was resolved (a data value, a label from the request or model).")
    matched_by: Literal["id", "label", "synonym", "model"]
    ancestors: list[str] = Field(default_factory=list, description="Ancestor ids, nearest first.")


class DocumentClaim(BaseModel):
    """A claim in one of the request's documents that the DE can agree or disagree with."""

    document: str
    page: int = Field(ge=1)
    quote: str = Field(max_length=500, description="The words on that page that make the claim.")
    gene: str | None = None
    set_id: str | None = None
    direction: Direction


class Expectations(BaseModel):
    """What the question predicts, with who said so; fixed for the whole run."""

    genes: list[ExpectedGene] = Field(default_factory=list)
    gene_sets: list[ExpectedGeneSet] = Field(default_factory=list)
    cell_type: CellTypeTerm | None = None
    claims: list[DocumentClaim] = Field(default_factory=list)
    notes: list[str] = Field(
        default_factory=list,
        description="What could not be used, for the report: unknown genes or sets, a cell type that resolved to nothing.",
    )
    set_by: str = Field(description="'request', 'request + offline name matching', 'request + model <id>', ...")
    pack_version: str
    usage: AgentUsage | None = Field(
        default=None, description="Tokens and cost of the model that helped set them; None when no model was called."
    )


class EnrichmentRow(BaseModel):
    """One gene set tested among one context's up or down DE genes (over-representation, decoupler)."""

    split_value: str
    direction: Direction
    set_id: str
    name: str
    set_size: int = Field(description="Genes of the set in the background.")
    overlap: int = Field(description="Genes of the set among the DE genes tested.")
    de_genes: int = Field(description="DE genes tested in this direction.")
    background: int = Field(description="Genes both the model and the input have.")
    odds_ratio: float | None = None
    p_value: float
    q_value: float = Field(description="Benjamini-Hochberg across the sets tested for this context and direction.")
    expected: Direction | None = Field(default=None, description="The direction the expectations give this set.")
    genes: list[str] = Field(default_factory=list, description="The overlapping genes (at most 20).")


class ScoreComponent(BaseModel):
    """One 0-10 score, or why it was not assessed; ``basis`` says what it was computed from."""

    name: ComponentName
    score: float | None = Field(default=None, ge=0, le=10, description="None: not assessed. Never a default number.")
    basis: str = Field(description="What the score was computed from, or why it was not assessed.")
    details: dict[str, float | int | str] = Field(default_factory=dict, description="The figures behind the score.")

    @property
    def assessed(self) -> bool:
        return self.score is not None


class GroundingEvaluation(BaseModel):
    """How well one round's prediction agrees with the expectations and the reference."""

    components: list[ScoreComponent]
    composite: int | None = Field(
        description="Weighted mean of the assessed components, rounded half up; None with fewer than two assessed."
    )
    weights: dict[str, float]
    formula_version: str = FORMULA_VERSION
    formula: str = Field(default="", description="How the composite is computed from the components, in words.")
    pack_version: str
    reference: str = Field(description="What the DE compared against: a synthetic control, or the query input.")
    enrichment: list[EnrichmentRow] = Field(default_factory=list)
    caveats: list[str] = Field(default_factory=list)

    def component(self, name: ComponentName) -> ScoreComponent | None:
        return next((c for c in self.components if c.name == name), None)
