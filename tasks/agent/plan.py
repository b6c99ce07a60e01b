"""What the agent decides and what it writes: the run plan, the findings and what they cost.

``PlanProposal`` is the part a planner chooses (its JSON schema is the ``submit_plan`` tool's
input schema); ``RunPlan`` adds what the request fixes and who planned it, and turns into the GPU
job's :class:`~inference.contract.StackJobSpec`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from clients.llm.usage import AgentUsage
from inference.contract import MAX_SEED, MAX_STEPS, MatrixLocation, Precision, StackJobSpec

__all__ = ["AgentUsage", "Findings", "ObsFilter", "PlanProposal", "RunPlan"]

ObsFilter = dict[str, list[str]]


class PlanProposal(BaseModel):
    """Which cells to use and which contexts to generate under: what a planner proposes."""

    model_config = ConfigDict(extra="forbid")

    split_column: str = Field(description="Prompt obs column whose values are the contexts to generate under.")
    split_values: list[str] = Field(
        min_length=1, description="Values of split_column to generate under; each needs enough prompt cells."
    )
    prompt_obs_filter: ObsFilter | None = Field(
        default=None,
        description="Keep prompt cells whose obs[column] is one of the values (every column must match); null keeps all.",
    )
    query_obs_filter: ObsFilter | None = Field(
        default=None,
        description="Keep query cells whose obs[column] is one of the values (every column must match); null keeps all.",
    )
    control_value: str | None = Field(
        default=None,
        description="A value of split_column that is the experiment's baseline (PBS, vehicle, DMSO, untreated, "
        "control, ...), if it has one: the query cells are generated under it too and every other context is "
        "compared with it cell by cell. Null when there is no baseline context.",
    )
    num_steps: int = Field(ge=1, le=MAX_STEPS, description="Generation steps (more is slower; 10 is a sound default).")
    rationale: str = Field(
        min_length=1, max_length=4000, description="Why these cells and contexts answer the question, in a few sentences."
    )

    @classmethod
    def tool_input_schema(cls) -> dict[str, Any]:
        """The JSON schema the ``submit_plan`` tool declares: the proposal's fields, no titles."""
        schema = cls.model_json_schema()
        _strip_titles(schema)
        return schema


class RunPlan(PlanProposal):
    """The plan a run executes: the proposal, the request's fixed fields and who made it."""

    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    precision: Precision = "bf16"
    planned_by: str = Field(
        description='"model <id>" or "offline planner (no ANTHROPIC_API_KEY)": the report says who planned.'
    )
    usage: AgentUsage | None = Field(default=None, description="Tokens and cost; None when no model was called.")

    def to_job_spec(
        self,
        *,
        prompt_uri: str,
        query_uri: str,
        checkpoint_uri: str,
        gene_list_uri: str,
        output_prefix: str,
        prompt_matrix: MatrixLocation | None = None,
        query_matrix: MatrixLocation | None = None,
        counts_required: bool = True,
        gene_name_column: str | None = None,
        cell_type_column: str | None = None,
        query_cell_type: str | None = None,
        backtest: bool = False,
        **job_options: Any,
    ) -> StackJobSpec:
        """The GPU job that carries this plan out on the staged inputs.

        ``prompt_matrix``/``query_matrix`` are where validation found each input's counts
        (``StagedInput.facts.matrix_used``): the job reads exactly those, so what was checked is
        what runs. ``job_options`` passes the job's own knobs (``batch_size``, ``chunk_size``, ``device``).
        """
        return StackJobSpec(
            mode="generate",
            prompt_uri=prompt_uri,
            query_uri=query_uri,
            prompt_matrix=prompt_matrix,
            query_matrix=query_matrix,
            counts_required=counts_required,
            gene_name_column=gene_name_column,
            checkpoint_uri=checkpoint_uri,
            gene_list_uri=gene_list_uri,
            output_prefix=output_prefix,
            prompt_obs_filter=self.prompt_obs_filter,
            query_obs_filter=self.query_obs_filter,
            split_column=self.split_column,
            split_values=list(self.split_values),
            control_value=self.control_value,
            cell_type_column=cell_type_column,
            query_cell_type=query_cell_type,
            backtest=backtest and cell_type_column is not None and query_cell_type is not None,
            num_steps=self.num_steps,
            seed=self.seed,
            precision=self.precision,
            **job_options,
        )


class Findings(BaseModel):
    """What the predictions say about the question, in markdown, and what to be careful about."""

    markdown: str = Field(description="The findings' body (no heading, no caveats section): the report adds those.")
    caveats: list[str] = Field(default_factory=list, description="What to be careful about; code adds the certain ones.")
    written_by: str = Field(description='"model <id>" or "offline summary (no model read the results)".')
    model_trained: bool = Field(description="False: the STACK checkpoint was untrained; the findings mean nothing.")
    usage: AgentUsage | None = None


def _strip_titles(node: Any) -> None:
    """pydantic's auto titles add tokens and nothing a model needs."""
    if isinstance(node, dict):
        node.pop("title", None)
        for value in node.values():
            _strip_titles(value)
    elif isinstance(node, list):
        for item in node:
            _strip_titles(item)
