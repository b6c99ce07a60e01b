"""The cells and their obs: duplicate cell names, the obs columns and values a run needs, and each
column's facts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from inference.data import obs_strings
from tasks.validation.errors import InputValidationError, plural
from tasks.validation.facts import LOW_CARDINALITY, ObsColumnFacts


def reject_duplicate_cells(path: Path, obs_names: pd.Index) -> None:
    """Cells are matched by name (query cells to their predictions): each name must be one cell."""
    dupes = obs_names[obs_names.duplicated()].unique()
    if len(dupes):
        examples = ", ".join(map(str, dupes[:5]))
        raise InputValidationError(
            path,
            f"duplicate cell names in obs_names ({plural(len(dupes), 'name')} used more than once, e.g. {examples}); "
            "cells are matched to their predictions by name",
            "make them unique before saving (adata.obs_names_make_unique())",
        )


def reject_missing_obs(path: Path, obs: pd.DataFrame, required: Mapping[str, Sequence[str] | None]) -> None:
    for column, values in required.items():
        if column not in obs.columns:
            raise InputValidationError(
                path,
                f"obs column {column!r} is missing (columns: {', '.join(map(str, obs.columns)) or 'none'})",
                "name one of the existing columns, or add the column to adata.obs",
            )
        present = set(obs_strings(obs[column]).dropna().unique())  # NaN is no value
        missing = [v for v in values or [] if str(v) not in present]
        if missing:
            shown = ", ".join(sorted(present)[:20])
            raise InputValidationError(
                path,
                f"obs column {column!r} has no cells with value(s) {', '.join(map(repr, missing))} (values: {shown})",
                "pick values that occur in the column (they are compared as strings)",
            )


def obs_column_facts(name: str, column: pd.Series) -> ObsColumnFacts:
    if isinstance(column.dtype, pd.CategoricalDtype):
        kind = "categorical"
    elif pd.api.types.is_bool_dtype(column):
        kind = "boolean"
    elif pd.api.types.is_numeric_dtype(column):
        kind = "numeric"
    else:
        kind = "text"
    n_unique = int(column.nunique(dropna=True))
    counts = None
    if kind in ("categorical", "boolean") or n_unique <= LOW_CARDINALITY:
        vc = obs_strings(column).value_counts().head(LOW_CARDINALITY)  # missing values are not counted as one
        counts = {str(k): int(v) for k, v in vc.items()}
    n_missing = int(column.isna().sum())
    return ObsColumnFacts(name=str(name), kind=kind, n_unique=n_unique, n_missing=n_missing, value_counts=counts)
