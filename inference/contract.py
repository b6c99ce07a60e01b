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
# Batch sets this in each task of a job with task_count > 1 (0, 1, ...); the local runner does the same.
TASK_INDEX_ENV = "BATCH_TASK_INDEX"

# File names under a job's output prefix.
PREDICTIONS_FILE = "predictions.h5ad"
SUMMARY_FILE = "summary.json"
MANIFEST_FILE = "manifest.json"
PROGRESS_FILE = "progress.json"
DE_FILE = "de.parquet"  # per treated context and gene, against its reference (inference.de)
# The columns of DE_FILE, one row per treated context and gene (see GeneChange for their meaning;
# statistic is the test's own, reference is a Reference, test names the test).
DE_COLUMNS = [
    "split_value", "gene", "mean_treated", "mean_reference", "log_fold_change", "statistic", "p_value",
    "q_value", "fraction_same_direction", "reference", "test",
]

GENE_MEANS_FILE = "gene_means.parquet"  # generate mode: what the report's plot draws (inference writes it)
# The columns of GENE_MEANS_FILE, one row per (source, context, model gene): ``source`` is "query_input"
# (the query cells as the job read them; split_value null) or "prediction" (one context's generated
# cells); ``mean_log1p_cpm`` is the mean over cells of log1p(counts per million), computed in chunks.
GENE_MEANS_COLUMNS = ["source", "split_value", "gene", "mean_log1p_cpm"]

SHARD_DIR_PREFIX = "shard-"  # a sharded job's task writes shard i's part under <output_prefix>/shard-<i>/

# A DE gene is "significant" in summaries and scores below this Benjamini-Hochberg q.
DE_Q_THRESHOLD = 0.05

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
    control_value: str | None = Field(
        default=None,
        description="A value of split_column that is the baseline (PBS, vehicle, untreated, ...): the query cells "
        "are generated under it too, same seed, and every other context's DE pairs against it by query_cell "
        "(synthetic control). None: the reference is the query input itself (query-as-control, unpaired).",
    )
    cell_type_column: str | None = Field(
        default=None,
        description="obs column naming cell types, in the query and prompt data: the query type's own markers "
        "(identity preservation) and the backtest read it.",
    )
    query_cell_type: str | None = Field(
        default=None, description="The query cells' value of cell_type_column."
    )
    backtest: bool = Field(
        default=False,
        description="Hold the prompt's real cells of query_cell_type under each treated context out of the prompt, "
        "and score the prediction of those contexts against them (cell-eval).",
    )
    marker_genes: int = Field(
        default=20, ge=1, le=500, description="How many of the query type's own markers identity keeps."
    )
    num_steps: int = Field(default=10, ge=1, le=MAX_STEPS)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    batch_size: int = Field(default=8, ge=1, le=4096)
    chunk_size: int = Field(default=256, ge=1, le=1_000_000, description="Query cells generated per chunk.")
    precision: Precision = "fp32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    shard_count: int = Field(
        default=1,
        ge=1,
        le=1000,
        description="Split the (filtered) query cells into this many contiguous shards (numpy.array_split order), "
        "each generated as its own query set with the same seed; 1: all query cells at once (arc-stack's "
        "generate() bit for bit). Part of what is computed: the same shard_count gives the same numbers whether "
        "the shards run one after another in one job or as parallel tasks that a merge joins.",
    )
    output_prefix: str = Field(description="New, empty location (file:// or gs://) for the outputs.")

    @model_validator(mode="after")
    def _generate_needs_prompt(self) -> StackJobSpec:
        if self.mode == "generate" and (self.prompt_uri is None or self.split_column is None):
            raise ValueError(
                "mode 'generate' needs prompt_uri and split_column: the prompt cells and the obs "
                "column whose values are the contexts to generate under"
            )
        if self.control_value is not None and self.split_column is None:
            raise ValueError("control_value needs split_column: it is a value of that column")
        if (self.backtest or self.query_cell_type is not None) and (
            self.cell_type_column is None or self.query_cell_type is None
        ):
            raise ValueError("query_cell_type and backtest need both cell_type_column and query_cell_type")
        if self.shard_count > 1 and self.mode != "generate":
            raise ValueError("shard_count > 1 splits a generate job's query cells; an embed job runs as one task (shard_count 1)")
        return self

    def contexts(self, present: list[str]) -> list[str]:
        """The contexts the job generates, in order: the treated ones, then the control (once)."""
        treated = [v for v in present if v != self.control_value]
        return treated + ([self.control_value] if self.control_value is not None else [])

    def to_argv(self, shards: list[int] | None = None) -> list[str]:
        """The container command that runs this job; with ``shards``, the command of a sharded job's
        tasks: task k (``BATCH_TASK_INDEX``) runs shard ``shards[k]`` and writes under :meth:`shard_uri`."""
        argv = ["python", "-m", JOB_MODULE, "--spec-json", self.model_dump_json()]
        if shards is not None:
            argv += ["--shards", ",".join(str(i) for i in shards)]
        return argv

    def shard_uri(self, index: int) -> str:
        """Where shard ``index`` of a sharded job writes its part (predictions, progress, manifest)."""
        return self.output_uri(f"{SHARD_DIR_PREFIX}{index}")

    def content_hash(self) -> str:
        """sha256 of every field except the output location: equal specs compute equal outputs."""
        # shard_count 1 is left out so that the hash (and a job id made from it) stays what it was before sharding existed
        payload = self.model_dump(mode="json", exclude={"output_prefix"} | ({"shard_count"} if self.shard_count == 1 else set()))
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


Reference = Literal["synthetic_control", "query_input"]


class GeneChange(BaseModel):
    """One gene of one treated context against its reference: a row of ``de.parquet``, in brief."""

    gene: str
    mean_treated: float = Field(description="Mean log1p-CPM of the treated arm's generated cells.")
    mean_reference: float = Field(description="Mean log1p-CPM of the reference arm (synthetic control or query input).")
    log_fold_change: float = Field(
        description="Paired: mean over query cells of the per-cell log1p-CPM difference; unpaired: "
        "mean_treated - mean_reference."
    )
    p_value: float
    q_value: float = Field(description="Benjamini-Hochberg across the genes tested in this context.")
    fraction_same_direction: float = Field(
        description="Share of query cells whose own change has the sign of log_fold_change (paired); unpaired: "
        "share of treated cells on that side of the reference mean."
    )


class SplitSummary(BaseModel):
    """How predictions under one treated context differ from its reference (``de.parquet`` has every gene)."""

    split_value: str
    cells: int
    reference: Reference = "query_input"
    reference_value: str | None = Field(default=None, description="The control context, for a synthetic control.")
    test: str = Field(default="", description="The test behind p_value, e.g. 'wilcoxon signed-rank, paired by query_cell'.")
    genes_tested: int = 0
    significant_up: int = Field(default=0, description="Genes with q < DE_Q_THRESHOLD and log_fold_change > 0.")
    significant_down: int = 0
    mean_shift: float = Field(description="Mean over tested genes of |log_fold_change| (log1p CPM).")
    top_up: list[GeneChange] = Field(description="Genes most raised against the reference (q, then effect).")
    top_down: list[GeneChange]


class IdentityMarkers(BaseModel):
    """The query cell type's own markers, from the input data (scanpy rank_genes_groups, type vs the rest)."""

    cell_type_column: str
    cell_type: str
    genes: list[str] = Field(description="Top markers, most specific first; only genes the model and input share.")
    cells_of_type: int
    cells_other: int
    method: str


class BacktestContext(BaseModel):
    """One treated context whose real cells of the query type were held out and predicted."""

    split_value: str
    real_cells: int
    predicted_cells: int
    metrics: dict[str, float] = Field(description="cell-eval metrics of the prediction against the real cells.")


class BacktestSummary(BaseModel):
    """The strongest grounding: predictions of real held-out cells, scored by cell-eval."""

    cell_type_column: str
    cell_type: str
    held_out_cells: int = 0
    contexts: list[BacktestContext] = Field(default_factory=list)
    tool: str = Field(default="", description="What computed the metrics, with its version (cell-eval x.y).")
    not_assessed: str | None = Field(default=None, description="Why there is no backtest, when there is none.")


class PredictionSummary(BaseModel):
    """What the agent and the grounding read about a run: small, text-friendly."""

    mode: Mode
    model_trained: bool
    query_cells: int
    genes: int
    control_value: str | None = None
    de_q_threshold: float = DE_Q_THRESHOLD
    splits: list[SplitSummary] = Field(default_factory=list, description="Treated contexts (the control is not one).")
    identity: IdentityMarkers | None = None
    backtest: BacktestSummary | None = None


class ShardInfo(BaseModel):
    """Which part of a sharded job a part's manifest vouches for."""

    index: int = Field(ge=0)
    count: int = Field(ge=1)
    query_cells: tuple[int, int] = Field(description="[start, stop) of the filtered query cells this shard generated.")
    blocks: dict[str, tuple[int, int]] = Field(
        default_factory=dict, description="Per context, [start, stop) of its rows in this part's predictions.h5ad."
    )


class PartRecord(BaseModel):
    """One part a merge joined, as the part's manifest reported it: where it ran and for how long."""

    index: int = Field(ge=0)
    uri: str = Field(description="The part's prefix.")
    device: str
    timings_s: dict[str, float]
    peak_memory_mb: float


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
    shard: ShardInfo | None = Field(default=None, description="Set in the manifest of one shard's part.")
    merged_from: list[str] = Field(
        default_factory=list, description="A merge's manifest: the part prefixes (shard 0, 1, ...) it joined."
    )
    parts: list[PartRecord] = Field(
        default_factory=list,
        description="A merge's manifest: each part's device, timings and peak memory (timings_s, peak_memory_mb "
        "and device are then the merge's own: it runs on a CPU machine).",
    )

    @property
    def gpu_seconds(self) -> float:
        """Wall seconds on a GPU: the job's total on a cuda device; for a merge, its parts' totals on cuda."""
        runs = [(p.device, p.timings_s) for p in self.parts] if self.parts else [(self.device, self.timings_s)]
        return round(sum(total_seconds(t) for d, t in runs if d.startswith("cuda")), 3)


def total_seconds(timings: dict[str, float]) -> float:
    """A job's total from its ``timings_s``: the phases and, beside them, "total_s" (inference.stack_job);
    the total is that one, never the phases plus it (an older manifest without it: the phases' sum)."""
    return timings["total_s"] if "total_s" in timings else sum(timings.values())


class MergeSpec(BaseModel):
    """The merge job of a sharded run: join the parts into the outputs a one-task job writes.

    ``spec.output_prefix`` is where the merged outputs go; ``parts[i]`` holds shard i's complete part
    (its manifest.json), possibly from different attempts of the sharded job.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    spec: StackJobSpec
    parts: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_part_per_shard(self) -> MergeSpec:
        if len(self.parts) != self.spec.shard_count:
            raise ValueError(f"a merge needs one part per shard: {len(self.parts)} part(s) for shard_count {self.spec.shard_count}")
        return self

    def to_argv(self) -> list[str]:
        return ["python", "-m", JOB_MODULE, "--merge-json", self.model_dump_json()]
