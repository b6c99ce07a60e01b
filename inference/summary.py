"""What the agent reads about a run: per context, how the predictions differ from the query input.

Both sides are compared as the per-gene mean of log1p(CPM), so library size differences between
generated and observed cells do not show up as gene changes. Only genes the query input has are
ranked: a model gene missing from the input is zero there and would always look "up".
"""

from __future__ import annotations

import numpy as np

from inference.contract import PredictionSummary, SplitSummary

TOP_GENES = 10


def mean_log_cpm(counts: np.ndarray) -> np.ndarray:
    """Per-gene mean of log1p(counts per million), cells in rows."""
    counts = np.asarray(counts, dtype=np.float64)
    lib = counts.sum(axis=1, keepdims=True)
    lib[lib == 0] = 1.0
    return np.log1p(counts / lib * 1e6).mean(axis=0)


def split_summary(
    split_value: str,
    predicted: np.ndarray,
    query_mean: np.ndarray,
    genes: list[str],
    genes_present: np.ndarray,
) -> SplitSummary:
    diff = mean_log_cpm(predicted) - query_mean
    ranked = np.nonzero(genes_present)[0]
    order = ranked[np.argsort(diff[ranked])]
    return SplitSummary(
        split_value=split_value,
        cells=int(predicted.shape[0]),
        mean_shift=float(np.abs(diff[ranked]).mean()),
        top_up=[(genes[i], round(float(diff[i]), 4)) for i in order[::-1][:TOP_GENES]],
        top_down=[(genes[i], round(float(diff[i]), 4)) for i in order[:TOP_GENES]],
    )


def summarize_generation(
    splits: dict[str, np.ndarray],
    query_counts: np.ndarray,
    genes: list[str],
    genes_present: np.ndarray,
    *,
    model_trained: bool,
) -> PredictionSummary:
    query_mean = mean_log_cpm(query_counts)
    return PredictionSummary(
        mode="generate",
        model_trained=model_trained,
        query_cells=int(query_counts.shape[0]),
        genes=len(genes),
        splits=[split_summary(v, pred, query_mean, genes, genes_present) for v, pred in splits.items()],
    )
