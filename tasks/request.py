"""What a user asks for and what a run gives back: the contracts of the analysis run flow and the API."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from clients.loop_settings import MAX_ITERATIONS
from inference.contract import MAX_SEED, MAX_STEPS

# Bounds on what a request may name: a run reads every value, the Prefect UI lists them, and none of
# them needs to be larger to describe a real analysis.
MAX_URI_CHARS = 2048
MAX_DOCUMENTS = 20
MAX_NAMES = 200  # values in a filter or split list, columns in a filter
Uri = Annotated[str, StringConstraints(min_length=1, max_length=MAX_URI_CHARS)]
ObsName = Annotated[str, StringConstraints(min_length=1, max_length=256)]
ObsValues = Annotated[list[ObsName], Field(max_length=MAX_NAMES)]
GeneSymbol = Annotated[str, StringConstraints(min_length=1, max_length=64, strip_whitespace=True)]
GeneSetName = Annotated[str, StringConstraints(min_length=1, max_length=512, strip_whitespace=True)]
Direction = Literal["up", "down"]
MAX_GENE_SET_FILES = 10


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
    prompt_uri: Uri = Field(description="h5ad with the prompt (context) cells: file://, gs:// or a local path.")
    query_uri: Uri = Field(description="h5ad with the query cells; may be the same file as the prompt.")
    gene_list_uri: Uri | None = Field(
        default=None, description="Model gene list (pickled list, .json or .txt of symbols); default from settings."
    )
    checkpoint_uri: Uri | None = Field(default=None, description="STACK checkpoint; default from settings.")
    documents: list[Uri] = Field(
        default_factory=list,
        max_length=MAX_DOCUMENTS,
        description="Protocols or papers (PDF or image URIs) for the agent to read.",
    )
    gene_name_column: ObsName | None = Field(
        default=None,
        description="var column with the gene symbols, when var_names are other ids (CELLxGENE: feature_name).",
    )
    # Explicit plan fields: when given, the plan uses them as they are.
    split_column: ObsName | None = Field(default=None, description="Prompt obs column whose values are the contexts.")
    split_values: list[ObsName] | None = Field(
        default=None, max_length=MAX_NAMES, description="Contexts to generate under."
    )
    prompt_obs_filter: dict[ObsName, ObsValues] | None = Field(
        default=None, max_length=MAX_NAMES, description="Which prompt cells to use."
    )
    query_obs_filter: dict[ObsName, ObsValues] | None = Field(
        default=None, max_length=MAX_NAMES, description="Which query cells to use."
    )
    control_value: ObsName | None = Field(
        default=None,
        description="The baseline value of split_column (PBS, vehicle, untreated, ...): the query cells are generated "
        "under it too and every other context is compared with it cell by cell. Unset: the agent may choose one; "
        "else the query input is the (weaker) reference.",
    )
    num_steps: int | None = Field(default=None, ge=1, le=MAX_STEPS, description="Generation steps.")
    # Grounding: what the prediction is scored against.
    cell_type_column: ObsName | None = Field(
        default=None, description="obs column with cell types (query and prompt): identity markers and the backtest."
    )
    query_cell_type: ObsName | None = Field(
        default=None, description="The query cells' value of cell_type_column; resolved to a Cell Ontology term."
    )
    expected_up: list[GeneSymbol] | None = Field(
        default=None, max_length=MAX_NAMES, description="Genes the question predicts go up (symbols)."
    )
    expected_down: list[GeneSymbol] | None = Field(
        default=None, max_length=MAX_NAMES, description="Genes the question predicts go down (symbols)."
    )
    expected_gene_sets: dict[GeneSetName, Direction] | None = Field(
        default=None,
        max_length=MAX_NAMES,
        description="Gene sets (GO id such as GO:0006954, or a set name from the pack or gene_set_uris) and the "
        "direction they are expected to move.",
    )
    gene_set_uris: list[Uri] = Field(
        default_factory=list,
        max_length=MAX_GENE_SET_FILES,
        description="GMT files of gene sets (MSigDB Hallmark and the like) beside the knowledge pack's GO BP.",
    )
    # The closed loop: rounds of plan, STACK, score, refine (unset: the settings' defaults, STACKFLOWS_LOOP__*).
    max_iterations: int | None = Field(
        default=None, ge=1, le=MAX_ITERATIONS, description="Most rounds (1 is a single pass); default 3."
    )
    score_threshold: float | None = Field(
        default=None, ge=0, le=10, description="The loop stops once a round's composite score reaches this; default 7."
    )
    gpu_seconds_budget: float | None = Field(
        default=None, gt=0, description="No round starts that would take the run's GPU-seconds past this."
    )
    llm_usd_budget: float | None = Field(
        default=None, gt=0, description="No round starts that would take the run's language-model cost past this (USD)."
    )
    backtest: bool = Field(
        default=True,
        description="Where the prompt has real cells of the query type under a treated context, hold them out of "
        "the prompt and score the prediction against them.",
    )
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    precision: Literal["fp32", "tf32", "bf16"] = "bf16"
    counts_required: bool = Field(
        default=True,
        description="Reject inputs that are not raw counts (STACK reads counts from .raw.X, .X or layers['counts']).",
    )

    def prompt_obs_required(self) -> dict[str, list[str] | None]:
        """obs columns (and values) the prompt file must have for the request's explicit plan fields."""
        required: dict[str, list[str] | None] = {}
        if self.split_column:
            values = [*(self.split_values or []), *([self.control_value] if self.control_value else [])]
            required[self.split_column] = values or None
        if self.cell_type_column:
            required[self.cell_type_column] = None
        return merge_obs_required(required, self.prompt_obs_filter or {})

    def query_obs_required(self) -> dict[str, list[str] | None]:
        """obs columns (and values) the query file must have for the request's explicit plan fields."""
        required: dict[str, list[str] | None] = {}
        if self.cell_type_column:
            required[self.cell_type_column] = [self.query_cell_type] if self.query_cell_type else None
        return merge_obs_required(required, self.query_obs_filter or {})


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

