"""Checks an h5ad file before anything is uploaded or any GPU is paid for, and reports its facts.

Pure functions (no Prefect): ``validate_h5ad(path, ...)`` returns a :class:`DatasetFacts` or raises
:class:`InputValidationError`, whose message names the file, the problem and the fix.

First a child process reads the file's HDF5 metadata (every attribute and string dataset) under a
timeout: libhdf5 can loop forever or crash on some damaged files, which no code in this process
could interrupt. Then the file is opened in AnnData's backed mode: ``obs`` and ``var`` are read, the
matrices stay on disk and are scanned in blocks (rows of a dense matrix, the stored values of a
sparse one), so a file larger than memory is checked in constant memory. Whatever a damaged file
makes h5py or anndata raise is reported as an InputValidationError.

The counts are looked for in ``raw.X``, then ``X``, then ``layers["counts"]`` (scanpy's habit); the
first that holds whole numbers is the matrix STACK reads (``DatasetFacts.matrix_used``), and the
job spec names it so the GPU job reads exactly that one. Gene names are matched as the job matches
them (:mod:`inference.data`): var_names, or a ``gene_name_column`` such as CELLxGENE's feature_name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import anndata as ad

from inference.data import gene_symbols, var_of
from tasks.validation.errors import InputValidationError
from tasks.validation.facts import DatasetFacts
from tasks.validation.genes import gene_overlap, reject_duplicate_genes
from tasks.validation.hdf5_file import METADATA_TIMEOUT_S, check_readable_hdf5, open_backed
from tasks.validation.matrices import (
    BLOCK_VALUES,
    find_counts,
    other_layers,
    reading,
    reject_bad_values,
    where_written,
)
from tasks.validation.obs import obs_column_facts, reject_duplicate_cells, reject_missing_obs


def validate_h5ad(
    path: str | Path,
    *,
    model_genes: Sequence[str] | None = None,
    min_gene_overlap: float = 0.5,
    counts_required: bool = True,
    required_obs: Mapping[str, Sequence[str] | None] | None = None,
    gene_name_column: str | None = None,
    block_values: int = BLOCK_VALUES,
    metadata_timeout_s: float = METADATA_TIMEOUT_S,
) -> DatasetFacts:
    """Check one h5ad and return its facts, or raise InputValidationError with the first problem.

    ``required_obs`` maps obs columns the run needs to the values it needs in them (None: any).
    ``gene_name_column`` names the var column holding gene symbols (arc-stack's ``--gene-name-col``).
    ``block_values`` bounds the values held in memory at once while scanning a matrix.
    ``metadata_timeout_s`` bounds the child process that reads the file's HDF5 metadata first.
    """
    path = Path(path)
    check_readable_hdf5(path, metadata_timeout_s)
    adata = open_backed(path)
    try:
        return _validate_open(
            path, adata, model_genes, min_gene_overlap, counts_required, required_obs or {}, gene_name_column,
            block_values,
        )
    finally:
        adata.file.close()


def _validate_open(
    path: Path,
    adata: ad.AnnData,
    model_genes: Sequence[str] | None,
    min_gene_overlap: float,
    counts_required: bool,
    required_obs: Mapping[str, Sequence[str] | None],
    gene_name_column: str | None,
    block_values: int,
) -> DatasetFacts:
    if adata.n_obs == 0:
        raise InputValidationError(
            path, "the data set has no cells (0 observations)", "select cells before saving, or pick another file"
        )
    if adata.n_vars == 0:
        raise InputValidationError(path, "the data set has no genes (0 variables)", "save the data with its genes")
    reject_duplicate_cells(path, adata.obs_names)

    used, stats, counts_at = find_counts(path, adata, block_values)
    reject_bad_values(path, stats[used], counts_required and counts_at is None, stats, other_layers(adata))

    with reading(path, f"the gene names of {where_written(used)}"):
        var = var_of(adata, used)
    var_names = gene_symbols(var, gene_name_column)
    if var_names is None:
        raise InputValidationError(
            path,
            f"gene_name_column {gene_name_column!r} is not a column of the var of {where_written(used)} "
            f"(columns: {', '.join(map(str, var.columns)) or 'none'})",
            "name the var column that holds gene symbols (CELLxGENE: feature_name), or leave gene_name_column "
            "unset to match var_names",
        )
    reject_duplicate_genes(path, var_names, used, gene_name_column)
    overlap = gene_overlap(path, var_names, model_genes, min_gene_overlap, var, gene_name_column)
    obs = adata.obs
    reject_missing_obs(path, obs, required_obs)

    return DatasetFacts(
        path=str(path),
        size_bytes=path.stat().st_size,
        n_obs=adata.n_obs,
        n_vars=len(var_names),
        counts_location=counts_at,
        matrix_used=used,
        gene_name_column=gene_name_column,
        sparse=stats[used].sparse,
        max_value=stats[used].max_value,
        gene_overlap=overlap[0] if overlap else None,
        genes_matched=overlap[1] if overlap else None,
        model_genes=len(set(model_genes)) if model_genes else None,
        var_names_sample=list(var_names[:10]),
        obs_columns=[obs_column_facts(name, obs[name]) for name in obs.columns],
    )
