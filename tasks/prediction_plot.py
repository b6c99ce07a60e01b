"""The report's plot: per-gene mean expression of the query input against each context's predictions.

A point on the diagonal is a gene the context left alone; the spread off it is what STACK changed.
Expression is compared as mean log1p(CPM) so inputs and predictions of different depth line up.

The plot draws from the job's ``gene_means.parquet`` (``inference.contract.GENE_MEANS_COLUMNS``: a
row per source, context and model gene), which the job computes in chunks from the matrices it
read: the flow never loads the query or the predictions, whatever their size. ``gene_means_table``
computes the same table from AnnData in memory, with the same maths, for tests and small data.
matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp

from inference import gene_means as means_mod
from inference.contract import GENE_MEANS_COLUMNS, MatrixLocation
from tasks.grounding.plots import headless_pyplot, save_png

if TYPE_CHECKING:
    import anndata as ad

QUERY_INPUT, PREDICTION = "query_input", "prediction"  # the table's sources


class Panel(NamedTuple):
    """One context's points: x the query input's mean, y the context's, a gene each."""

    context: str
    query: np.ndarray
    predicted: np.ndarray


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
    from inference.data import (
        gene_positions,
        gene_symbols,
        matrix_at,
        resolve_matrix,
        var_of,
    )

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


def gene_means_table(query: ad.AnnData, predictions: ad.AnnData, split_key: str = "split_value") -> pd.DataFrame:
    """``gene_means.parquet`` computed in memory from a query and its predictions (tests, small data).

    The query's side is its generated cells (``predictions.obs["query_cell"]``) read as the job read
    them (``uns["stack_job"]``); each context's side is its predicted cells.
    """
    genes = [str(g) for g in predictions.var_names]
    generated = query[query.obs_names.isin(predictions.obs["query_cell"])]
    parts = [means_mod.frame(QUERY_INPUT, None, genes, query_means_on_genes(generated, genes, *what_the_job_read(predictions)))]
    contexts = predictions.obs[split_key].astype(str)
    for context in dict.fromkeys(contexts):
        parts.append(means_mod.frame(PREDICTION, context, genes, mean_log1p_cpm(predictions[contexts == context].X)))
    return means_mod.table(parts)


def panels(gene_means: pd.DataFrame, name: str = "gene_means") -> list[Panel]:
    """A panel per predicted context, in the table's order; the query's mean matched by gene (a gene
    the query lacks counts as zero, as the job counts it)."""
    missing = [c for c in GENE_MEANS_COLUMNS if c not in gene_means.columns]
    if missing:
        raise ValueError(f"{name}: columns {missing} are missing (has {list(gene_means.columns)}); it is not a gene-means table")
    query = gene_means[gene_means["source"] == QUERY_INPUT]
    if query.empty:
        raise ValueError(f"{name}: no rows with source {QUERY_INPUT!r}; the job wrote no query means to plot against")
    query_by_gene = query.drop_duplicates("gene").set_index("gene")["mean_log1p_cpm"].astype(float)
    predicted = gene_means[gene_means["source"] == PREDICTION]
    contexts = predicted["split_value"].astype(str)
    result = []
    for context in dict.fromkeys(contexts):
        rows = predicted[contexts == context]
        x = query_by_gene.reindex(rows["gene"]).fillna(0.0).to_numpy()
        result.append(Panel(context, x, rows["mean_log1p_cpm"].astype(float).to_numpy()))
    return result


def plot_predictions_vs_query(gene_means: pd.DataFrame, out: Path) -> Path:
    """One panel per context of the job's gene means; returns the PNG's path."""
    return draw_panels(panels(gene_means), out)


def draw_panels(drawn: list[Panel], out: Path) -> Path:
    """Scatter each panel against the diagonal and save the PNG."""
    plt = headless_pyplot()
    fig, axes = plt.subplots(1, max(len(drawn), 1), figsize=(4.2 * max(len(drawn), 1), 4.2), squeeze=False)
    for ax, panel in zip(axes[0], drawn):
        x, y = panel.query, panel.predicted
        ax.scatter(x, y, s=4, alpha=0.5)
        top = max(float(x.max(initial=0)), float(y.max(initial=0))) * 1.05 or 1.0
        ax.plot([0, top], [0, top], color="grey", linewidth=0.8)
        ax.set_title(f"context: {panel.context}", fontsize=9)
        ax.set_xlabel("query input, mean log1p CPM")
        ax.set_ylabel("predicted, mean log1p CPM")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_png(fig, out)
    return out

