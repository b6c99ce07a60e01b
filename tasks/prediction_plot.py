"""The report's plot: per-gene mean expression of the query input against each context's predictions.

A point on the diagonal is a gene the context left alone; the spread off it is what STACK changed.
Expression is compared as mean log1p(CPM) so inputs and predictions of different depth line up.
The query's side is read from the matrix and gene names the job read (recorded in the predictions'
``uns["stack_job"]``), with the job's own helpers: plot and predictions always show the same data.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import matplotlib

matplotlib.use("Agg")  # headless: workers and CI have no display
import matplotlib.pyplot as plt
import numpy as np
import scipy.sparse as sp

from inference.contract import MatrixLocation
from inference.data import gene_positions, gene_symbols, matrix_at, resolve_matrix, var_of


def mean_log1p_cpm(matrix: np.ndarray | sp.spmatrix) -> np.ndarray:
    """Per-gene mean of log1p counts-per-million, without densifying a sparse matrix."""
    depth = np.asarray(matrix.sum(axis=1)).ravel()
    scale = np.divide(1e6, depth, out=np.zeros_like(depth, dtype=float), where=depth > 0)
    if sp.issparse(matrix):
        scaled = sp.diags(scale) @ matrix
        scaled = scaled.tocsr()
        scaled.data = np.log1p(scaled.data)
        return np.asarray(scaled.mean(axis=0)).ravel()
    return np.log1p(np.asarray(matrix) * scale[:, None]).mean(axis=0)


def query_means_on_genes(
    query: ad.AnnData, genes: list[str], matrix: MatrixLocation | None = None, gene_name_column: str | None = None
) -> np.ndarray:
    """Mean log1p CPM of the query input on the model's genes (genes it lacks count as zero).

    ``matrix`` and ``gene_name_column`` say what the job read (None: arc-stack's choice, raw.X when
    there is a .raw, and var_names).
    """
    location = resolve_matrix(query, matrix)
    values = matrix_at(query, location)
    symbols = gene_symbols(var_of(query, location), gene_name_column)
    if values is None or symbols is None:
        raise ValueError(
            f"the query has no {location} or no var column {gene_name_column!r}, which its predictions were made "
            "from; plot with the query file the job read"
        )
    full = mean_log1p_cpm(values)
    columns = gene_positions(symbols, genes)
    return np.where(columns >= 0, full[np.maximum(columns, 0)], 0.0)


def what_the_job_read(predictions: ad.AnnData) -> tuple[MatrixLocation | None, str | None]:
    """The query matrix and gene-name column the job recorded in the predictions (None: not recorded)."""
    recorded = predictions.uns.get("stack_job", {})
    return recorded.get("query_matrix"), recorded.get("gene_name_column")


def plot_predictions_vs_query(query: ad.AnnData, predictions: ad.AnnData, split_key: str, out: Path) -> Path:
    """One panel per context; returns the PNG's path. The query is read as the job read it."""
    genes = list(predictions.var_names)
    x = query_means_on_genes(query, genes, *what_the_job_read(predictions))
    splits = list(dict.fromkeys(predictions.obs[split_key].astype(str)))
    fig, axes = plt.subplots(1, len(splits), figsize=(4.2 * len(splits), 4.2), squeeze=False)
    for ax, split in zip(axes[0], splits):
        y = mean_log1p_cpm(predictions[predictions.obs[split_key].astype(str) == split].X)
        ax.scatter(x, y, s=4, alpha=0.5)
        top = max(float(x.max(initial=0)), float(y.max(initial=0))) * 1.05 or 1.0
        ax.plot([0, top], [0, top], color="grey", linewidth=0.8)
        ax.set_title(f"context: {split}", fontsize=9)
        ax.set_xlabel("query input, mean log1p CPM")
        ax.set_ylabel("predicted, mean log1p CPM")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
