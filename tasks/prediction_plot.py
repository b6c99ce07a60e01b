"""The report's plot: per-gene mean expression of the query input against each context's predictions.

A point on the diagonal is a gene the context left alone; the spread off it is what STACK changed.
Expression is compared as mean log1p(CPM) so inputs and predictions of different depth line up.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import matplotlib

matplotlib.use("Agg")  # headless: workers and CI have no display
import matplotlib.pyplot as plt
import numpy as np
import scipy.sparse as sp


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


def query_means_on_genes(query: ad.AnnData, genes: list[str]) -> np.ndarray:
    """Mean log1p CPM of the query input on the model's genes (genes it lacks count as zero)."""
    counts = query.raw.to_adata() if query.raw is not None else query
    upper = {g.upper(): i for i, g in enumerate(counts.var_names)}
    full = mean_log1p_cpm(counts.X)
    return np.array([full[upper[g.upper()]] if g.upper() in upper else 0.0 for g in genes])


def plot_predictions_vs_query(query: ad.AnnData, predictions: ad.AnnData, split_key: str, out: Path) -> Path:
    """One panel per context; returns the PNG's path."""
    genes = list(predictions.var_names)
    x = query_means_on_genes(query, genes)
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
