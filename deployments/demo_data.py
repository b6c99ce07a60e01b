"""The bundled demo inputs, made from scanpy's ``pbmc68k_reduced`` (ships with scanpy, no download).

``pbmc68k_reduced`` keeps 765 genes of 700 PBMCs. Its ``.X`` is scaled (negative values) and its
``.raw.X`` is ``log1p`` of counts normalised to 10,000 per cell *before* the genes were subset,
using the cell's total ``obs['n_counts']``. Inverting that gives back the integer counts::

    counts = expm1(raw.X) * n_counts / 1e4

Checked on the data (see tests/storage/test_storage_demo_data.py): every reconstructed non-zero
lies within 0.1 of a whole number (the leftover is float32 rounding in the stored log values) and
the smallest is 1, so rounding recovers the original UMI counts. The 765 genes hold 11-28%
(median 20%) of each cell's total, as expected for a subset of highly variable genes.

``prepare_demo_data(directory)`` writes ``pbmc68k_counts.h5ad`` (counts in ``.X``, all obs
columns, the UMAP) and ``pbmc68k_genes.pkl`` (the genes' upper-case symbols, standing in for a
model gene list). ``prepare_demo_checkpoint(directory, gene_list)`` adds a small *untrained* STACK
checkpoint over those genes (``stack-untrained-tiny.ckpt``; no weights can be downloaded here), the
one the demo, the nightly canary and the local stack's default model use. Both are idempotent:
files already there are left alone.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from contextlib import suppress
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel

from clients.storage import ObjectExistsError
from clients.storage.local import LocalStore

COUNTS_FILE = "pbmc68k_counts.h5ad"
GENES_FILE = "pbmc68k_genes.pkl"
CHECKPOINT_FILE = "stack-untrained-tiny.ckpt"
NORMALISED_TOTAL = 1e4  # what pbmc68k_reduced's raw.X was normalised to before log1p
MAX_ROUNDING = 0.1  # reconstructed values further than this from a whole number mean the recipe is wrong


class DemoData(BaseModel):
    h5ad: Path
    gene_list: Path
    n_obs: int
    n_vars: int


def reconstruct_counts(adata: ad.AnnData) -> sp.csr_matrix:
    """Integer counts from ``pbmc68k_reduced``'s log-normalised ``raw.X`` (see module docstring)."""
    log_norm = sp.csr_matrix(adata.raw.X, dtype=np.float64)
    per_cell = adata.obs["n_counts"].to_numpy(dtype=np.float64) / NORMALISED_TOTAL
    scaled = sp.diags(per_cell) @ log_norm.expm1()
    scaled = sp.csr_matrix(scaled)
    deviation = np.abs(scaled.data - np.round(scaled.data))
    if deviation.size and deviation.max() > MAX_ROUNDING:
        raise ValueError(
            f"counts reconstruction is off by up to {deviation.max():.3f}: this scanpy's pbmc68k_reduced "
            "is not log1p(normalize_total(target_sum=1e4)) of the counts"
        )
    counts = sp.csr_matrix(
        (np.round(scaled.data).astype(np.float32), scaled.indices, scaled.indptr), shape=scaled.shape
    )
    counts.eliminate_zeros()
    return counts


def build_counts_adata() -> ad.AnnData:
    import scanpy as sc

    source = sc.datasets.pbmc68k_reduced()
    counts = ad.AnnData(
        X=reconstruct_counts(source),
        obs=source.obs.copy(),
        var=source.raw.var[[]].copy(),
        obsm={"X_umap": source.obsm["X_umap"]},
    )
    counts.uns["stackflows_demo"] = (
        "counts reconstructed from scanpy pbmc68k_reduced raw.X: round(expm1(x) * n_counts / 1e4)"
    )
    return counts


def prepare_demo_data(directory: Path) -> DemoData:
    """Write the demo h5ad and gene list into ``directory`` unless they are there already."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    h5ad_path, genes_path = directory / COUNTS_FILE, directory / GENES_FILE
    store = LocalStore()
    if not (h5ad_path.exists() and genes_path.exists()):
        adata = build_counts_adata()
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            tmp_h5ad = Path(tmp) / COUNTS_FILE
            adata.write_h5ad(tmp_h5ad)
            # create-only: if another process made it first, it made the same file
            with suppress(ObjectExistsError):
                store.put_file(tmp_h5ad, str(h5ad_path))
        with suppress(ObjectExistsError):
            store.put_bytes(pickle.dumps([str(g).upper() for g in adata.var_names]), str(genes_path))
    backed = ad.read_h5ad(h5ad_path, backed="r")
    try:
        return DemoData(h5ad=h5ad_path, gene_list=genes_path, n_obs=backed.n_obs, n_vars=backed.n_vars)
    finally:
        backed.file.close()


def prepare_demo_checkpoint(directory: Path, gene_list: Path) -> Path:
    """A small randomly initialised STACK checkpoint over ``gene_list``'s genes, built once.

    Built under a temporary name and renamed, so a concurrent set-up or a flow run never reads half a
    file (same genes and seed: whichever build lands is the same model).
    """
    from inference.gene_list import read_gene_list
    from inference.make_checkpoint import build_checkpoint

    path = Path(directory) / CHECKPOINT_FILE
    if path.exists():
        return path
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.ckpt")
    build_checkpoint(read_gene_list(gene_list), tmp)
    os.replace(tmp, path)
    return path
