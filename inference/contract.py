"""The contract between the flow and the GPU job: the command line and the files the job writes.

The flow builds a :class:`StackJobSpec`, turns it into ``python -m inference.stack_job --spec-json ...``
with :meth:`StackJobSpec.to_argv`, and later reads the job's :class:`JobManifest`,
:class:`JobProgress` and :class:`PredictionSummary` from the output prefix. Both sides import this
module; it depends on pydantic alone, so the flow side need not install torch.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

JOB_MODULE = "inference.stack_job"

# File names under a job's output prefix.
PREDICTIONS_FILE = "predictions.h5ad"
SUMMARY_FILE = "summary.json"
MANIFEST_FILE = "manifest.json"
PROGRESS_FILE = "progress.json"

# Bounds every caller shares (request, plan, job): what the job and Prefect can run. The job seeds
# numpy with ``seed + step``, which must stay below 2**32; Prefect stores parameters as JSON, where
# integers past 64 bits break its run list for everyone.
MAX_STEPS = 1000
MAX_SEED = 2**32 - 1 - MAX_STEPS

Mode = Literal["generate", "embed"]
Precision = Literal["fp32", "tf32", "bf16"]
# Where in an h5ad the matrix the job reads is: validation finds the counts, the spec names them.
MatrixLocation = Literal["raw.X", "X", "layers/counts"]


class StackJobSpec(BaseModel):
    """What one STACK job computes. Everything that changes the output is a field here."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Mode = "generate"
    query_uri: str = Field(description="h5ad of the query cells (raw counts).")
    prompt_uri: str | None = Field(
        default=None, description="h5ad of the prompt (context) cells; required for generate."
    )
    checkpoint_uri: str = Field(description="STACK checkpoint (Lightning layout).")
    gene_list_uri: str = Field(description="The model's gene symbols: a pickled list, .json or .txt (inference.gene_list).")
    prompt_obs_filter: dict[str, list[str]] | None = Field(
        default=None, description="Keep prompt cells whose obs[column] is one of the values (all must hold)."
    )
    query_obs_filter: dict[str, list[str]] | None = Field(
        default=None, description="Keep query cells whose obs[column] is one of the values (all must hold)."
    )
    prompt_matrix: MatrixLocation | None = Field(
        default=None,
        description="The prompt's matrix, as validation found it; None: raw.X when the file has .raw, else X "
        "(arc-stack's own choice).",
    )
    query_matrix: MatrixLocation | None = Field(
        default=None, description="The query's matrix, as validation found it; None as for prompt_matrix."
    )
    counts_required: bool = Field(
        default=True, description="Refuse a matrix that is not raw counts (non-integer, negative or non-finite)."
    )
    gene_name_column: str | None = Field(
        default=None,
        description="var column with the gene symbols (raw.var's for raw.X), when var_names are other ids "
        "(CELLxGENE: feature_name); None: var_names.",
    )
    split_column: str | None = Field(
        default=None, description="obs column of the prompt data whose values define the contexts."
    )
    split_values: list[str] | None = Field(
        default=None, description="Contexts to generate under; None means every value present."
    )
    num_steps: int = Field(default=10, ge=1, le=MAX_STEPS)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    batch_size: int = Field(default=8, ge=1, le=4096)
    chunk_size: int = Field(default=256, ge=1, le=1_000_000, description="Query cells generated per chunk.")
    precision: Precision = "fp32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    output_prefix: str = Field(description="New, empty location (file:// or gs://) for the outputs.")

    @model_validator(mode="after")
    def _generate_needs_prompt(self) -> StackJobSpec:
        if self.mode == "generate" and (self.prompt_uri is None or self.split_column is None):
            raise ValueError(
                "mode 'generate' needs prompt_uri and split_column: the prompt cells and the obs "
                "column whose values are the contexts to generate under"
            )
        return self

    def to_argv(self) -> list[str]:
        """The container command that runs this job."""
        return ["python", "-m", JOB_MODULE, "--spec-json", self.model_dump_json()]

    def content_hash(self) -> str:
        """sha256 of every field except the output location: equal specs compute equal outputs."""
        payload = self.model_dump(mode="json", exclude={"output_prefix"})
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def output_uri(self, name: str) -> str:
        return f"{self.output_prefix.rstrip('/')}/{name}"


class JobProgress(BaseModel):
    """Written atomically by the job as chunks finish; the flow turns it into a progress artifact."""

    phase: Literal["loading", "generating", "embedding", "writing", "done", "failed"]
    chunks_done: int = 0
    chunks_total: int = 0
    cells_done: int = 0
    cells_total: int = 0
    message: str = ""
    updated_at: datetime

    @property
    def fraction(self) -> float:
        if self.phase == "done":
            return 1.0
        return self.chunks_done / self.chunks_total if self.chunks_total else 0.0


class SplitSummary(BaseModel):
    """How predictions under one context differ from the query input."""

    split_value: str
    cells: int
    mean_shift: float = Field(description="Mean over genes of |mean predicted - mean query| (log1p CPM).")
    top_up: list[tuple[str, float]] = Field(description="Genes most raised vs the query input, with log fold change.")
    top_down: list[tuple[str, float]]


class PredictionSummary(BaseModel):
    """What the agent reads to interpret a run: small, text-friendly."""

    mode: Mode
    model_trained: bool
    query_cells: int
    genes: int
    splits: list[SplitSummary] = Field(default_factory=list)


class JobManifest(BaseModel):
    """Written last by the job: its presence means the outputs are complete."""

    spec: StackJobSpec
    stack_config: dict = Field(default_factory=dict, description="The checkpoint's model_config.")
    model_trained: bool
    model_parameters: int
    device: str
    precision: Precision
    timings_s: dict[str, float]
    peak_memory_mb: float
    outputs: dict[str, str] = Field(description="File name -> sha256 of every output written.")
    predictions_shape: tuple[int, int]
    started_at: datetime
    finished_at: datetime
