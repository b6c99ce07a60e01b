"""What a user asks for and what a run gives back: the contracts of the analysis run flow and the API."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class AnalysisRequest(BaseModel):
    """One analysis, as filled in from the Prefect UI form, a schedule or ``POST /runs``.

    Everything but ``question`` and the two data URIs is optional: what is left out the agent plans.
    """

    model_config = ConfigDict(extra="forbid")

    question: str = Field(
        min_length=3,
        max_length=4000,
        description="What you want to learn, in plain words.",
        examples=["How would dendritic cells look in the context of monocytes and B cells?"],
    )
    prompt_uri: str = Field(description="h5ad with the prompt (context) cells: file://, gs:// or a local path.")
    query_uri: str = Field(description="h5ad with the query cells; may be the same file as the prompt.")
    gene_list_uri: str | None = Field(default=None, description="Model gene list; default from settings.")
    checkpoint_uri: str | None = Field(default=None, description="STACK checkpoint; default from settings.")
    documents: list[str] = Field(
        default_factory=list, description="Protocols or papers (PDF or image URIs) for the agent to read."
    )
    # Explicit plan fields: when given, the plan uses them as they are.
    split_column: str | None = Field(default=None, description="Prompt obs column whose values are the contexts.")
    split_values: list[str] | None = Field(default=None, description="Contexts to generate under.")
    prompt_obs_filter: dict[str, list[str]] | None = Field(default=None, description="Which prompt cells to use.")
    query_obs_filter: dict[str, list[str]] | None = Field(default=None, description="Which query cells to use.")
    num_steps: int | None = Field(default=None, ge=1, le=1000, description="Generation steps.")
    seed: int = Field(default=0, ge=0)
    precision: Literal["fp32", "tf32", "bf16"] = "bf16"
    counts_required: bool = Field(
        default=True,
        description="Reject inputs that are not raw counts (STACK expects counts in .raw.X or .X).",
    )

    def prompt_obs_required(self) -> dict[str, list[str] | None]:
        """obs columns (and values) the prompt file must have for the request's explicit plan fields."""
        required: dict[str, list[str] | None] = {}
        if self.split_column:
            required[self.split_column] = list(self.split_values) if self.split_values else None
        return merge_obs_required(required, self.prompt_obs_filter or {})

    def query_obs_required(self) -> dict[str, list[str] | None]:
        """obs columns (and values) the query file must have for the request's explicit plan fields."""
        return merge_obs_required({}, self.query_obs_filter or {})


def merge_obs_required(
    required: Mapping[str, list[str] | None], more: Mapping[str, list[str] | None]
) -> dict[str, list[str] | None]:
    """Union of two column -> values requirements (e.g. one file serving as prompt and query);
    None (the column only) yields to named values."""
    merged = dict(required)
    for column, values in more.items():
        if values is None:
            merged.setdefault(column, None)
        else:
            merged[column] = sorted(set(merged.get(column) or []) | set(values))
    return merged

