"""What validation reports: the facts of a validated h5ad, of its obs columns and of a matrix scan."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from inference.contract import MatrixLocation

# Columns with at most this many distinct values get their value counts in the facts.
LOW_CARDINALITY = 50

CountsLocation = MatrixLocation  # "raw.X", "X" or "layers/counts", looked at in that order


class ObsColumnFacts(BaseModel):
    """One ``obs`` column, as a planner needs it: what kind, and for categories, which and how many."""

    name: str
    kind: Literal["categorical", "numeric", "boolean", "text"]
    n_unique: int
    n_missing: int = Field(default=0, description="Cells with no value (NaN): never a value, context or filter.")
    value_counts: dict[str, int] | None = Field(
        default=None, description=f"Cells per value, for categorical or ≤{LOW_CARDINALITY}-valued columns."
    )


class MatrixStats(BaseModel):
    """What a scan of one matrix found."""

    location: CountsLocation
    sparse: bool
    dtype: str
    n_values_scanned: int
    n_nonfinite: int = 0
    n_negative: int = 0
    n_noninteger: int = 0
    max_value: float | None = None

    @property
    def is_counts(self) -> bool:
        return self.n_nonfinite == 0 and self.n_negative == 0 and self.n_noninteger == 0


class DatasetFacts(BaseModel):
    """What a validated h5ad holds: shape, where its counts are, gene overlap, its obs columns."""

    path: str
    size_bytes: int
    sha256: str | None = Field(
        default=None, description="Content hash of the validated bytes (set by the validate-input task)."
    )
    n_obs: int
    n_vars: int = Field(description="Genes in the matrix STACK reads (raw.X's genes when counts are there).")
    counts_location: CountsLocation | None = Field(
        description="Where the raw counts are; None when counts were not required and none were found."
    )
    matrix_used: CountsLocation = Field(description="The matrix STACK will read: the job spec names it.")
    gene_name_column: str | None = Field(
        default=None, description="The var column whose values were matched as gene symbols; None: var_names."
    )
    sparse: bool
    max_value: float | None
    gene_overlap: float | None = Field(
        default=None, description="Fraction of the model's genes found in the input (upper-cased symbols)."
    )
    genes_matched: int | None = None
    model_genes: int | None = None
    var_names_sample: list[str] = Field(description="The first few gene names, for messages and reports.")
    obs_columns: list[ObsColumnFacts]

    def obs_column(self, name: str) -> ObsColumnFacts | None:
        return next((c for c in self.obs_columns if c.name == name), None)
