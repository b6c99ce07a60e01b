"""The demo inputs: integer counts recovered from pbmc68k_reduced, written once."""

from __future__ import annotations

import pickle
from pathlib import Path

import anndata as ad
import numpy as np
import scanpy as sc

from deployments.demo_data import prepare_demo_data
from tasks.validation import read_gene_list, validate_h5ad


def test_storage_demo_data_is_counts_that_reproduce_the_bundled_normalisation(tmp_path: Path) -> None:
    demo = prepare_demo_data(tmp_path)
    counts = ad.read_h5ad(demo.h5ad)
    source = sc.datasets.pbmc68k_reduced()

    x = counts.X.toarray()
    assert np.array_equal(x, np.round(x)) and x.min() == 0 and x[x > 0].min() == 1
    # normalising the counts back (to 1e4 per cell, by the cell's recorded total) gives raw.X again
    renormalised = np.log1p(x / source.obs["n_counts"].to_numpy()[:, None] * 1e4)
    assert np.abs(renormalised - source.raw.X.toarray()).max() < 0.01
    # the 765 genes are a subset: each cell keeps part, never more, of its recorded total
    share = x.sum(1) / source.obs["n_counts"].to_numpy()
    assert 0.05 < share.min() and share.max() < 1
    assert list(counts.obs.columns) == list(source.obs.columns)
    assert pickle.loads(demo.gene_list.read_bytes()) == [g.upper() for g in source.raw.var_names]
    facts = validate_h5ad(demo.h5ad, model_genes=read_gene_list(demo.gene_list))
    assert facts.counts_location == "X" and facts.gene_overlap == 1.0


def test_storage_demo_data_is_idempotent(tmp_path: Path) -> None:
    first = prepare_demo_data(tmp_path)
    stamps = {p: p.stat().st_mtime_ns for p in (first.h5ad, first.gene_list)}

    second = prepare_demo_data(tmp_path)

    assert second == first
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pbmc68k_counts.h5ad", "pbmc68k_genes.pkl"]
