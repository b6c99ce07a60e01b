"""Per-gene mean of log1p(counts per million): what the report's plot draws, computed by the job.

The same numbers as ``tasks.prediction_plot.mean_log1p_cpm`` (each cell's library is its total over
the matrix given; a cell with none is all zeros), computed over row chunks so memory is one chunk,
never cells x genes. For sparse input the sum runs over the non-zeros in the order scipy's
``mean`` does, so the values are the same bits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from inference.contract import GENE_MEANS_COLUMNS

ROW_CHUNK = 4096


def mean_log1p_cpm(matrix: np.ndarray | sp.spmatrix, *, chunk_rows: int = ROW_CHUNK) -> np.ndarray:
    """Per column: mean over rows of log1p(x / row total * 1e6), in float64."""
    n_rows, n_cols = matrix.shape
    total = np.zeros(n_cols, dtype=np.float64)
    if n_rows == 0:
        return np.full(n_cols, np.nan)
    weight = 1.0 / n_rows  # scipy's mean scales each value, then sums
    sparse = sp.issparse(matrix)
    rows = sp.csr_matrix(matrix) if sparse else np.asarray(matrix)
    for start in range(0, n_rows, chunk_rows):
        block = rows[start : start + chunk_rows]
        depth = np.asarray(block.sum(axis=1)).ravel()
        scale = np.divide(1e6, depth, out=np.zeros_like(depth, dtype=float), where=depth > 0)
        if sparse:
            scaled = (sp.diags(scale) @ block).tocsr()
            np.add.at(total, scaled.indices, np.log1p(scaled.data) * weight)
        else:
            total += np.log1p(block * scale[:, None]).sum(axis=0) * weight
    return total


def on_model_genes(means: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Means over an input's own columns, put in model-gene order (genes it lacks: 0)."""
    return np.where(columns >= 0, means[np.maximum(columns, 0)], 0.0)


def frame(source: str, split_value: str | None, genes: Sequence[str], means: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({
        "source": source, "split_value": pd.Series([split_value] * len(genes), dtype=object),
        "gene": [str(g) for g in genes], "mean_log1p_cpm": np.asarray(means, dtype=np.float64),
    })[GENE_MEANS_COLUMNS]


def table(parts: Iterable[pd.DataFrame]) -> pd.DataFrame:
    parts = list(parts)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=GENE_MEANS_COLUMNS)
