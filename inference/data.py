"""Reading the job's h5ad inputs into count matrices in the model's gene order.

Everything here is checked before any model is loaded: a bad input fails in seconds with a message
that names the input, the problem and the fix (:class:`InputError`).

The job reads exactly the matrix the spec names (``prompt_matrix``/``query_matrix``: ``raw.X``,
``X`` or ``layers/counts``), which validation chose where it found the counts; a spec that names
none gets arc-stack's ``generate()`` choice (``.raw`` when the file has one, else ``.X``). The rest
follows ``generate()`` so the job can reproduce it exactly: genes are matched by upper-cased symbol
(var_names, or the spec's ``gene_name_column`` as arc-stack's ``--gene-name-col``); model genes the
input lacks are zeros. The flow's validation and report use the same helpers, so all three read the
same matrix and the same gene names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from inference.contract import MatrixLocation

class InputError(ValueError):
    """A job input is unusable; the message says which input, what is wrong and how to fix it."""


@dataclass(frozen=True)
class CountMatrix:
    """Cells x model genes, raw counts as float32 CSR, plus the cells' obs.

    Sparse on the host: memory follows the input's non-zeros, never cells x model genes; the
    generation builds each batch's windows dense on the device only.
    """

    counts: sp.csr_matrix  # (cells, model genes) float32, sorted indices, no explicit zeros
    obs: pd.DataFrame
    genes_present: np.ndarray  # bool per model gene: the input had this gene
    matrix: MatrixLocation = "X"  # where in the file the counts were read

    @property
    def n_cells(self) -> int:
        return self.counts.shape[0]


def check_gene_list(genes: Sequence[str], *, source: str) -> list[str]:
    """The model's gene list as strings; duplicates (after upper-casing) make alignment ambiguous."""
    genes = [str(g) for g in genes]
    upper = pd.Index([g.upper() for g in genes])
    if len(genes) == 0:
        raise InputError(f"gene list {source} is empty; point gene_list_uri at the model's gene list")
    if upper.has_duplicates:
        dupes = sorted(set(upper[upper.duplicated()]))[:5]
        raise InputError(f"gene list {source} has duplicate symbols {dupes}; it must list each gene once")
    return genes


def apply_obs_filter(adata: ad.AnnData, obs_filter: dict[str, list[str]] | None, *, name: str) -> ad.AnnData:
    """Keep cells whose ``obs[column]`` is one of the given values, for every column named."""
    if not obs_filter:
        return adata
    keep = np.ones(adata.n_obs, dtype=bool)
    for column, values in obs_filter.items():
        if column not in adata.obs.columns:
            raise InputError(
                f"{name}: obs filter names column {column!r}, which the file does not have "
                f"(columns: {list(adata.obs.columns)[:20]}); fix the filter"
            )
        keep &= obs_strings(adata.obs[column]).isin([str(v) for v in values]).to_numpy()
    if not keep.any():
        raise InputError(f"{name}: no cells match the obs filter {obs_filter}; loosen the filter")
    return adata[keep]


def obs_strings(column: pd.Series) -> pd.Series:
    """An obs column's values as strings, as filters and contexts compare them.

    A missing value (NaN, None) stays missing (None) instead of becoming the string 'nan': it is
    no context to generate under and matches no filter value.
    """
    return column.astype(str).astype(object).where(column.notna().to_numpy(), None)


def resolve_matrix(adata: ad.AnnData, location: MatrixLocation | None) -> MatrixLocation:
    """The location to read: the one given, else arc-stack's choice (raw.X when there is a .raw)."""
    if location is not None:
        return location
    return "raw.X" if adata.raw is not None else "X"


def matrix_at(adata: ad.AnnData, location: MatrixLocation) -> object | None:
    """The matrix stored at ``location``, or None when the file has none there."""
    if location == "raw.X":
        return adata.raw.X if adata.raw is not None else None
    if location == "X":
        return adata.X
    layer = location.removeprefix("layers/")
    return adata.layers[layer] if layer in adata.layers else None


def var_of(adata: ad.AnnData, location: MatrixLocation) -> pd.DataFrame:
    """The var table that names the genes of the matrix at ``location`` (raw.var for raw.X).

    raw.var often lacks the annotation columns var has (CELLxGENE keeps ``feature_name`` in var):
    when both name the same genes in the same order, raw.var is given var's other columns.
    """
    if location != "raw.X" or adata.raw is None:
        return adata.var
    raw_var = adata.raw.var
    missing = [c for c in adata.var.columns if c not in raw_var.columns]
    if not missing or not raw_var.index.equals(adata.var.index):
        return raw_var
    merged = raw_var.copy()
    for column in missing:
        merged[column] = adata.var[column].to_numpy()
    return merged


def gene_symbols(var: pd.DataFrame, gene_name_column: str | None) -> pd.Index | None:
    """The genes' names as the model matches them: var_names, or ``var[gene_name_column]``.

    None when the column is not in ``var`` (arc-stack then silently falls back to var_names; here
    the caller refuses, because matching the wrong names yields zeros, not an error).
    """
    if gene_name_column is None:
        return pd.Index(var.index.astype(str))
    if gene_name_column not in var.columns:
        return None
    return pd.Index(var[gene_name_column].astype(str).to_numpy())


def gene_positions(symbols: pd.Index, model_genes: Sequence[str]) -> np.ndarray:
    """For each model gene, its column among ``symbols`` (upper-cased; first occurrence wins), or -1."""
    source = pd.Index([s.upper() for s in symbols])
    first = ~source.duplicated()
    position = pd.Series(np.nonzero(first)[0], index=source[first])
    found = position.reindex(pd.Index([g.upper() for g in model_genes])).to_numpy()
    return np.where(np.isnan(found), -1, found).astype(np.int64)


def suggest_gene_column(
    var: pd.DataFrame, model_genes: Sequence[str], current: str | None = None
) -> tuple[str, int] | None:
    """The var column whose values match the most model genes (and how many), if any matches.

    For the fix of a "no gene overlap" error: CELLxGENE files keep Ensembl ids in var_names and
    the symbols in ``var["feature_name"]``.
    """
    model = {g.upper() for g in model_genes}
    best: tuple[str, int] | None = None
    for column in var.columns:
        series = var[column]
        if column == current or not (series.dtype == object or isinstance(series.dtype, pd.CategoricalDtype)
                                     or pd.api.types.is_string_dtype(series.dtype)):
            continue
        matched = len(model & set(series.astype(str).str.upper()))
        if matched and (best is None or matched > best[1]):
            best = (str(column), matched)
    return best


def align_counts(
    adata: ad.AnnData,
    model_genes: Sequence[str],
    *,
    name: str,
    matrix: MatrixLocation | None = None,
    gene_name_column: str | None = None,
    counts_required: bool = True,
    matrix_field: str = "matrix",
) -> CountMatrix:
    """Counts of ``adata`` at ``matrix`` in ``model_genes`` order; missing genes are zero.

    ``matrix`` None reads arc-stack's choice (raw.X when there is a .raw, else X). With
    ``counts_required`` a matrix that is not whole numbers is refused: STACK's likelihood is over
    counts, and log-normalised values would run to completion on the wrong data. ``matrix_field``
    is the spec field the messages tell the user to set.
    """
    location = resolve_matrix(adata, matrix)
    values = matrix_at(adata, location)
    if values is None:
        raise InputError(
            f"{name}: the spec names the matrix {location}, which the file does not have; set "
            f"{matrix_field} to where the counts are (raw.X, X or layers/counts)"
        )
    var = var_of(adata, location)
    symbols = gene_symbols(var, gene_name_column)
    if symbols is None:
        raise InputError(
            f"{name}: gene_name_column {gene_name_column!r} is not a column of the var of {location} "
            f"(columns: {list(var.columns)[:20]}); name the column holding gene symbols, or unset it to use var_names"
        )
    src_cols = gene_positions(symbols, model_genes)
    present = src_cols >= 0
    if not present.any():
        raise InputError(_no_overlap_message(name, symbols, model_genes, var, gene_name_column))
    counts = _model_columns(values, src_cols, present)
    _check_counts(counts.data, name=name, location=location, counts_required=counts_required, matrix_field=matrix_field)
    counts.data = counts.data.astype(np.float32, copy=False)
    counts.eliminate_zeros()
    return CountMatrix(counts=counts, obs=adata.obs.copy(), genes_present=present, matrix=location)


def _model_columns(values: object, src_cols: np.ndarray, present: np.ndarray) -> sp.csr_matrix:
    """The input's columns for the model genes it has, as CSR over all model genes (missing: empty).

    Only the non-zeros are copied: the selected columns' indices are renumbered to the model
    genes' positions (increasing, so rows stay sorted), never a dense cells x genes block.
    """
    cols = src_cols[present]
    if sp.issparse(values):
        block = sp.csr_matrix(values)[:, cols]
    else:  # a dense input is dense already: its selected columns are no larger
        block = sp.csr_matrix(np.asarray(values)[:, cols])
    block.sort_indices()
    positions = np.flatnonzero(present)
    indices = positions[block.indices].astype(np.int64 if positions.size > 2**31 - 1 else np.int32)
    out = sp.csr_matrix((block.data, indices, block.indptr), shape=(block.shape[0], present.size))
    out.has_sorted_indices = True
    return out


def _no_overlap_message(
    name: str, symbols: pd.Index, model_genes: Sequence[str], var: pd.DataFrame, gene_name_column: str | None
) -> str:
    named = f"var[{gene_name_column!r}]" if gene_name_column else "var_names"
    message = (
        f"{name}: none of its {len(symbols)} genes (e.g. {list(symbols[:3])}, from {named}) is in the "
        f"model's gene list of {len(model_genes)} (e.g. {list(model_genes[:3])})"
    )
    suggestion = suggest_gene_column(var, model_genes, current=gene_name_column)
    if suggestion:
        column, matched = suggestion
        return message + f"; var[{column!r}] holds {matched} of them: set gene_name_column={column!r}"
    return message + "; var_names must be gene symbols of the species the model was trained on"


def _check_counts(block: np.ndarray, *, name: str, location: str, counts_required: bool, matrix_field: str) -> None:
    """Refuse values no expression matrix has, and (when counts are required) any fraction.

    ``block`` is the stored values (a CSR's ``data``): the zeros it leaves out pass every check.
    """
    if not np.isfinite(block).all():
        raise InputError(f"{name}: the count matrix ({location}) has NaN or infinite values; pass raw counts")
    if (block < 0).any():
        raise InputError(
            f"{name}: the count matrix ({location}) has negative values; pass raw counts, not scaled data"
        )
    if counts_required and not np.issubdtype(block.dtype, np.integer):
        fractional = block != np.floor(block)
        if fractional.any():
            example = float(block[fractional][0])
            raise InputError(
                f"{name}: {location} is not raw counts: {int(fractional.sum())} of its values on the model's "
                f"genes are not whole numbers (e.g. {example:.4g}; log-normalised data?); point {matrix_field} "
                "at the counts (validation finds them), or set counts_required=False if the model expects "
                "normalised values"
            )


def select_split_values(obs: pd.DataFrame, column: str, requested: Sequence[str] | None, *, name: str) -> list[str]:
    """The contexts to generate under: the requested values (all must exist) or every value, sorted."""
    if column not in obs.columns:
        raise InputError(
            f"{name}: split column {column!r} is not in obs (columns: {list(obs.columns)[:20]}); "
            "set split_column to the obs column whose values are the contexts"
        )
    available = obs_strings(obs[column]).dropna()  # a missing value is never a context
    if requested:
        missing = [str(v) for v in requested if not (available == str(v)).any()]
        if missing:
            raise InputError(
                f"{name}: split values {missing} are not in obs[{column!r}] "
                f"(present: {sorted(available.unique())[:20]}); fix split_values"
            )
        return [str(v) for v in requested]
    if available.empty:
        raise InputError(f"{name}: split column {column!r} has no values (every cell's is missing); pick another")
    return sorted(available.unique())


def read_h5ad(path: str, *, name: str) -> ad.AnnData:
    try:
        return ad.read_h5ad(path)
    except Exception as exc:  # h5py/anndata raise many types for a bad file
        raise InputError(f"{name}: cannot read {path} as h5ad ({exc}); pass an AnnData .h5ad file") from exc
