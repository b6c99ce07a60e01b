"""The staged data as a planner sees it: the obs tables of the prompt and query h5ad, nothing more.

Planning needs cell metadata (columns, values, counts), never expression values, so the h5ad is
opened backed and read-only and only ``obs`` (plus the shape) is read. A ``gs://``
input is fetched once to a temporary directory first.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anndata as ad
import pandas as pd

Side = Literal["prompt", "query"]

# A column with at most this many distinct values is treated as categorical (listed with counts).
MAX_CATEGORIES = 200
# How many values a description lists per column before it says "and N more".
LISTED_VALUES = 30


@dataclass(frozen=True)
class ObsTable:
    """One h5ad's cell metadata, values compared as strings (as the job's obs filters compare them)."""

    uri: str
    obs: pd.DataFrame
    n_vars: int

    @property
    def n_obs(self) -> int:
        return len(self.obs)

    def column_strings(self, column: str) -> pd.Series:
        return self.obs[column].astype(str)

    def mask(self, obs_filter: dict[str, list[str]] | None) -> pd.Series:
        """Cells whose obs[column] is one of the values, for every column; unknown columns raise KeyError."""
        keep = pd.Series(True, index=self.obs.index)
        for column, values in (obs_filter or {}).items():
            if column not in self.obs.columns:
                raise KeyError(column)
            keep &= self.column_strings(column).isin([str(v) for v in values])
        return keep

    def count(self, obs_filter: dict[str, list[str]] | None = None) -> int:
        return int(self.mask(obs_filter).sum())

    def value_counts(self, column: str, obs_filter: dict[str, list[str]] | None = None) -> dict[str, int]:
        """Cells per value of ``column`` among the filtered cells, most frequent first (zero counts left out)."""
        strings = self.column_strings(column)[self.mask(obs_filter)]
        counts = strings.value_counts()
        return {str(k): int(v) for k, v in counts.items() if v > 0}

    def is_categorical(self, column: str) -> bool:
        series = self.obs[column]
        if isinstance(series.dtype, pd.CategoricalDtype) or series.dtype == bool or series.dtype == object:
            return True
        if pd.api.types.is_integer_dtype(series.dtype):
            return series.nunique() <= MAX_CATEGORIES
        return pd.api.types.is_string_dtype(series.dtype)

    def describe_column(self, column: str) -> dict[str, Any]:
        series = self.obs[column]
        if self.is_categorical(column):
            counts = self.value_counts(column)
            shown = dict(list(counts.items())[:LISTED_VALUES])
            described: dict[str, Any] = {
                "name": column,
                "kind": "categorical",
                "distinct_values": len(counts),
                "cells_per_value": shown,
            }
            if len(counts) > len(shown):
                described["more_values_not_listed"] = len(counts) - len(shown)
            return described
        numeric = pd.to_numeric(series, errors="coerce")
        return {
            "name": column,
            "kind": "numeric",
            "min": _round(numeric.min()),
            "max": _round(numeric.max()),
            "mean": _round(numeric.mean()),
        }

    def describe(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "cells": self.n_obs,
            "genes": self.n_vars,
            "obs_columns": [self.describe_column(c) for c in self.obs.columns],
        }


@dataclass(frozen=True)
class PlanData:
    """Prompt and query cell metadata, plus what the validation step already learned (gene overlap)."""

    prompt: ObsTable
    query: ObsTable
    gene_overlap: float | None = None

    def side(self, which: Side) -> ObsTable:
        if which not in ("prompt", "query"):
            raise ValueError(f"which must be 'prompt' or 'query', got {which!r}")
        return self.prompt if which == "prompt" else self.query

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {
            "prompt": self.prompt.describe(),
            "query": self.query.describe() if self.query.uri != self.prompt.uri else "same file as prompt",
        }
        if self.gene_overlap is not None:
            described["gene_overlap_with_model"] = round(self.gene_overlap, 4)
        return described

    @classmethod
    def from_uris(cls, prompt_uri: str, query_uri: str, *, gene_overlap: float | None = None) -> PlanData:
        """Read both obs tables; the same URI is read once."""
        prompt = read_obs_table(prompt_uri)
        query = prompt if query_uri == prompt_uri else read_obs_table(query_uri)
        return cls(prompt=prompt, query=query, gene_overlap=gene_overlap)


def read_obs_table(uri: str) -> ObsTable:
    """Open an h5ad backed and read-only and keep its obs and shape."""
    with _local_copy(uri) as path:
        adata = ad.read_h5ad(path, backed="r")
        try:
            return ObsTable(
                uri=uri,
                obs=adata.obs.copy(),
                n_vars=int(adata.n_vars),
            )
        finally:
            adata.file.close()


@contextmanager
def _local_copy(uri: str) -> Iterator[Path]:
    from clients.storage import local_path_of, scheme_of, store_for

    if scheme_of(uri) == "file":
        path = local_path_of(uri)
        if not path.is_file():
            raise FileNotFoundError(f"{uri}: no such h5ad file; stage the input first or fix the URI")
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="stackflows-plan-") as tmp:
        yield store_for(uri).get_file(uri, Path(tmp) / "input.h5ad")


def _round(value: Any) -> float | None:
    return None if pd.isna(value) else round(float(value), 4)
