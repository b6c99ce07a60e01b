"""The staged data as a planner sees it: the obs tables of the prompt and query h5ad, nothing more.

Planning needs cell metadata (columns, values, counts), never expression values, so the h5ad is
opened read-only and only ``obs`` (plus the gene count) is read. A ``gs://``
input is fetched once to a temporary directory first.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import h5py
import pandas as pd
from anndata.io import read_elem

from inference.data import obs_strings

if TYPE_CHECKING:
    from tasks.staging import StagedInput

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
        """Values as strings; a missing value (NaN) stays missing, never a value 'nan' to plan with."""
        return obs_strings(self.obs[column])

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
            missing = int(series.isna().sum())
            if missing:
                described["cells_without_a_value"] = missing  # NaN: no value to split or filter on
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
    """Prompt and query cell metadata, plus what validation already learned (gene overlap with the model)."""

    prompt: ObsTable
    query: ObsTable
    gene_overlap: dict[str, float] = field(default_factory=dict)

    def side(self, which: Side) -> ObsTable:
        if which not in ("prompt", "query"):
            raise ValueError(f"which must be 'prompt' or 'query', got {which!r}")
        return self.prompt if which == "prompt" else self.query

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {
            "prompt": self.prompt.describe(),
            "query": self.query.describe() if self.query.uri != self.prompt.uri else "same file as prompt",
        }
        if self.gene_overlap:
            described["gene_overlap_with_model"] = {k: round(v, 4) for k, v in self.gene_overlap.items()}
        return described

    @classmethod
    def from_uris(cls, prompt_uri: str, query_uri: str) -> PlanData:
        """Read both obs tables; the same URI is read once."""
        prompt = read_obs_table(prompt_uri)
        query = prompt if query_uri == prompt_uri else read_obs_table(query_uri)
        return cls(prompt=prompt, query=query)

    @classmethod
    def from_inputs(cls, prompt: StagedInput | str, query: StagedInput | str) -> PlanData:
        """From staged inputs (or plain URIs): obs read from the validated local copy when it is still there."""
        tables: dict[str, ObsTable] = {}
        overlap: dict[str, float] = {}
        for side, given in (("prompt", prompt), ("query", query)):
            uri = given if isinstance(given, str) else given.uri
            if uri in tables:
                tables[side] = tables[uri]
            else:
                tables[side] = tables[uri] = read_obs_table(uri, local_copy=_validated_copy(given))
            if not isinstance(given, str) and given.gene_overlap is not None:
                overlap[side] = given.gene_overlap
        return cls(prompt=tables["prompt"], query=tables["query"], gene_overlap=overlap)


def read_obs_table(uri: str, local_copy: Path | None = None) -> ObsTable:
    """Read an h5ad's obs table and gene count, read-only, touching nothing else in the file.

    Only the ``obs`` group is decoded (AnnData's own element reader), so a file with large
    matrices, embeddings or neighbour graphs costs no more than its metadata.
    ``local_copy`` is a local file with the same bytes as ``uri`` (saves a download).
    """
    with _local_copy(uri, local_copy) as path:
        try:
            with h5py.File(path, "r") as h5:
                obs = read_elem(h5["obs"])
                var = h5["var"]
                n_vars = int(var[var.attrs["_index"]].shape[0])
        except (OSError, KeyError) as unreadable:
            raise ValueError(
                f"{uri}: not a readable h5ad ({unreadable}); validate and stage the input first"
            ) from unreadable
        return ObsTable(uri=uri, obs=obs, n_vars=n_vars)


def _validated_copy(given: StagedInput | str) -> Path | None:
    """The file validation read, if it is still there unchanged in size (staging copied its bytes)."""
    if isinstance(given, str):
        return None
    path = Path(given.facts.path)
    return path if path.is_file() and path.stat().st_size == given.size_bytes else None


@contextmanager
def _local_copy(uri: str, known_copy: Path | None = None) -> Iterator[Path]:
    from clients.storage import local_path_of, scheme_of, store_for

    if known_copy is not None:
        yield known_copy
        return
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
