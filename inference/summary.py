"""What the agent reads about a run: per context, how the predictions differ from the query input.

Both sides are compared as the per-gene mean of log1p(CPM), so library size differences between
generated and observed cells do not show up as gene changes. Only genes the query input has are
ranked: a model gene missing from the input is zero there and would always look "up".
"""

from __future__ import annotations

import numpy as np
import torch

from inference.contract import PredictionSummary, SplitSummary

TOP_GENES = 10


def mean_log_cpm(counts: torch.Tensor) -> np.ndarray:
    """Per-gene mean of log1p(counts per million), cells in rows; computed where the tensor lives."""
    counts = counts.float()
    lib = counts.sum(dim=1, keepdim=True, dtype=torch.float64).clamp(min=1.0).float()
    return torch.log1p(counts / lib * 1e6).mean(dim=0, dtype=torch.float64).cpu().numpy()


def split_summary(
    split_value: str,
    cells: int,
    predicted_mean: np.ndarray,
    query_mean: np.ndarray,
    genes: list[str],
    genes_present: np.ndarray,
) -> SplitSummary:
    diff = predicted_mean - query_mean
    ranked = np.nonzero(genes_present)[0]
    order = ranked[np.argsort(diff[ranked])]
    return SplitSummary(
        split_value=split_value,
        cells=int(cells),
        mean_shift=float(np.abs(diff[ranked]).mean()),
        top_up=[(genes[i], round(float(diff[i]), 4)) for i in order[::-1][:TOP_GENES] if diff[i] > 0],
        top_down=[(genes[i], round(float(diff[i]), 4)) for i in order[:TOP_GENES] if diff[i] < 0],
    )


def summarize_generation(
    predicted_means: dict[str, np.ndarray],
    query_counts: torch.Tensor,
    genes: list[str],
    genes_present: np.ndarray,
    *,
    model_trained: bool,
) -> PredictionSummary:
    """``predicted_means``: per context, :func:`mean_log_cpm` of its predictions (one row per query cell)."""
    query_mean = mean_log_cpm(query_counts)
    n_query = int(query_counts.shape[0])
    return PredictionSummary(
        mode="generate",
        model_trained=model_trained,
        query_cells=n_query,
        genes=len(genes),
        splits=[
            split_summary(v, n_query, mean, query_mean, genes, genes_present) for v, mean in predicted_means.items()
        ],
    )
