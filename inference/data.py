"""Reading the job's h5ad inputs into count matrices in the model's gene order.

Everything here is checked before any model is loaded: a bad input fails in seconds with a message
that names the input, the problem and the fix (:class:`InputError`).

Alignment follows arc-stack's ``generate()`` so the job can reproduce it exactly: counts come from
``.raw`` when the file has one, else ``.X``; genes are matched by upper-cased symbol; model genes
the input lacks are zeros.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp


class InputError(ValueError):
    """A job input is unusable; the message says which input, what is wrong and how to fix it."""


@dataclass(frozen=True)
class CountMatrix:
    """Cells x model genes, raw counts as float32, plus the cells' obs."""

    counts: np.ndarray  # (cells, model genes) float32, dense
    obs: pd.DataFrame
    genes_present: np.ndarray  # bool per model gene: the input had this gene

    @property
    def n_cells(self) -> int:
        return self.counts.shape[0]


def check_gene_list(genes: Sequence[str], *, source: str) -> list[str]:
    """The model's gene list as strings; duplicates (after upper-casing) make alignment ambiguous."""
    genes = [str(g) for g in genes]
    upper = pd.Index([g.upper() for g in genes])
    if len(genes) == 0:
        raise InputError(f"gene list {source} is empty; point gene_list_uri at the model's pickled gene list")
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
        keep &= adata.obs[column].astype(str).isin([str(v) for v in values]).to_numpy()
    if not keep.any():
        raise InputError(f"{name}: no cells match the obs filter {obs_filter}; loosen the filter")
    return adata[keep]


def align_counts(adata: ad.AnnData, model_genes: Sequence[str], *, name: str) -> CountMatrix:
    """Counts of ``adata`` (``.raw`` if present) in ``model_genes`` order; missing genes are zero."""
    matrix = adata.raw.X if adata.raw is not None else adata.X
    var_names = adata.raw.var_names if adata.raw is not None else adata.var_names
    source = pd.Index([str(g).upper() for g in var_names])
    # First occurrence wins where an input repeats a symbol.
    first = ~source.duplicated()
    position = pd.Series(np.nonzero(first)[0], index=source[first])
    target = pd.Index([g.upper() for g in model_genes])
    src_cols = position.reindex(target).to_numpy()
    present = ~np.isnan(src_cols)
    if not present.any():
        raise InputError(
            f"{name}: none of its {len(source)} genes (e.g. {list(var_names[:3])}) is in the model's "
            f"gene list of {len(target)} (e.g. {list(model_genes[:3])}); var_names must be gene "
            "symbols of the species the model was trained on"
        )
    counts = np.zeros((adata.n_obs, len(target)), dtype=np.float32)
    cols = src_cols[present].astype(np.int64)
    block = matrix[:, cols] if not sp.issparse(matrix) else matrix.tocsc()[:, cols]
    block = block.toarray() if sp.issparse(block) else np.asarray(block)
    if not np.isfinite(block).all():
        raise InputError(f"{name}: the count matrix has NaN or infinite values; pass raw counts")
    if (block < 0).any():
        raise InputError(f"{name}: the count matrix has negative values; pass raw counts, not scaled data")
    counts[:, present] = block.astype(np.float32, copy=False)
    return CountMatrix(counts=counts, obs=adata.obs.copy(), genes_present=present)


def select_split_values(obs: pd.DataFrame, column: str, requested: Sequence[str] | None, *, name: str) -> list[str]:
    """The contexts to generate under: the requested values (all must exist) or every value, sorted."""
    if column not in obs.columns:
        raise InputError(
            f"{name}: split column {column!r} is not in obs (columns: {list(obs.columns)[:20]}); "
            "set split_column to the obs column whose values are the contexts"
        )
    available = obs[column].astype(str)
    if requested:
        missing = [str(v) for v in requested if not (available == str(v)).any()]
        if missing:
            raise InputError(
                f"{name}: split values {missing} are not in obs[{column!r}] "
                f"(present: {sorted(available.unique())[:20]}); fix split_values"
            )
        return [str(v) for v in requested]
    return sorted(available.unique())


def read_h5ad(path: str, *, name: str) -> ad.AnnData:
    try:
        return ad.read_h5ad(path)
    except Exception as exc:  # h5py/anndata raise many types for a bad file
        raise InputError(f"{name}: cannot read {path} as h5ad ({exc}); pass an AnnData .h5ad file") from exc
