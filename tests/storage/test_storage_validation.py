"""h5ad validation: a corpus of broken inputs, each rejected with its own problem, and good inputs' facts."""

from __future__ import annotations

import gzip
import pickle
import re
from collections.abc import Callable
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from tasks.validation import InputValidationError, read_gene_list, validate_h5ad

N_OBS, N_VARS = 40, 30
GENES = [f"Gene{i}" for i in range(N_VARS)]
MODEL_GENES = [g.upper() for g in GENES]


def counts(n_obs: int = N_OBS, n_vars: int = N_VARS, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).poisson(2.0, size=(n_obs, n_vars)).astype(np.float32)


def cells(n_obs: int = N_OBS) -> pd.DataFrame:
    labels = np.array(["B", "T", "NK", "Mono"])[np.arange(n_obs) % 4]
    return pd.DataFrame(
        {
            "cell_type": pd.Categorical(labels),
            "donor": [f"d{i % 2}" for i in range(n_obs)],
            "depth": np.arange(n_obs) * 1.5,
        },
        index=[f"c{i}" for i in range(n_obs)],
    )


def write(path: Path, X, genes=GENES, obs: pd.DataFrame | None = None, raw_X=None) -> Path:
    adata = ad.AnnData(X=X, obs=obs if obs is not None else cells(X.shape[0]), var=pd.DataFrame(index=genes))
    if raw_X is not None:
        adata.raw = ad.AnnData(X=raw_X, obs=adata.obs, var=adata.var)
    adata.write_h5ad(path)
    return path


def log_normalised(x: np.ndarray) -> np.ndarray:
    return np.log1p(x / np.maximum(x.sum(1, keepdims=True), 1) * 1e4).astype(np.float32)


# -- the corpus: (builder, validate_h5ad keyword arguments, what the problem must say) --------------


def _missing(p: Path) -> Path:
    return p


def _empty_file(p: Path) -> Path:
    p.write_bytes(b"")
    return p


def _csv(p: Path) -> Path:
    p.write_text("cell,GENE0,GENE1\nc0,1,2\n")
    return p


def _truncated(p: Path) -> Path:
    write(p, sp.csr_matrix(counts(400, N_VARS)), obs=cells(400))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) * 2 // 3])
    return p


def _plain_hdf5(p: Path) -> Path:
    with h5py.File(p, "w") as f:
        f["matrix"] = counts()
    return p


def _anndata_groups_but_garbage(p: Path) -> Path:
    with h5py.File(p, "w") as f:
        f["obs"] = np.array([b"not", b"a", b"table"])
        f["var"] = np.arange(3)
        f["X"] = np.array([b"not", b"numbers"])
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
    return p


def _no_cells(p: Path) -> Path:
    return write(p, np.zeros((0, N_VARS), dtype=np.float32), obs=cells(0))


def _no_genes(p: Path) -> Path:
    return write(p, np.zeros((N_OBS, 0), dtype=np.float32), genes=[])


def _nan_dense(p: Path) -> Path:
    x = counts()
    x[3, 4] = np.nan
    return write(p, x)


def _inf_sparse(p: Path) -> Path:
    x = counts()
    x[5, 6] = np.inf
    return write(p, sp.csr_matrix(x))


def _nan_in_last_block(p: Path) -> Path:
    x = counts()
    x[-1, -1] = np.nan
    return write(p, x)


def _negative(p: Path) -> Path:
    x = counts()
    x[0, 0] = -3
    return write(p, sp.csr_matrix(x))


def _log_normalised(p: Path) -> Path:
    return write(p, sp.csr_matrix(log_normalised(counts())))


def _scaled_x_lognorm_raw(p: Path) -> Path:
    """Like scanpy's pbmc68k_reduced: .X scaled (negative), .raw.X log1p-normalised: no counts anywhere."""
    lognorm = log_normalised(counts())
    scaled = (lognorm - lognorm.mean(0)) / (lognorm.std(0) + 1e-6)
    return write(p, scaled, raw_X=sp.csr_matrix(lognorm))


def _duplicate_genes(p: Path) -> Path:
    return write(p, counts(), genes=GENES[:-1] + [GENES[0]])


def _case_duplicate_genes(p: Path) -> Path:
    return write(p, counts(), genes=GENES[:-1] + [GENES[0].upper()])


def _ensembl_ids(p: Path) -> Path:
    return write(p, counts(), genes=[f"ENSG{i:011d}" for i in range(N_VARS)])


def _third_of_the_genes(p: Path) -> Path:
    return write(p, counts(), genes=GENES[:10] + [f"OTHER{i}" for i in range(N_VARS - 10)])


def _counts(p: Path) -> Path:
    return write(p, sp.csr_matrix(counts()))


def _duplicate_cells(p: Path) -> Path:
    obs = cells()
    obs.index = [f"c{i // 2}" for i in range(N_OBS)]  # two cells per name, as concatenated batches have
    return write(p, counts(), obs=obs)


def _gzipped(p: Path) -> Path:
    plain = _counts(p.with_name("plain.h5ad"))
    p.write_bytes(gzip.compress(plain.read_bytes()))
    return p


def _directory(p: Path) -> Path:
    p.mkdir()
    _counts(p / "inside.h5ad")
    return p


def _zarr_store(p: Path) -> Path:
    store = p.with_suffix(".zarr")
    ad.AnnData(X=counts(), obs=cells(), var=pd.DataFrame(index=GENES)).write_zarr(store)
    return store


def _lognorm_with_layers(p: Path) -> Path:
    adata = ad.AnnData(X=log_normalised(counts()), obs=cells(), var=pd.DataFrame(index=GENES))
    adata.layers["spliced"] = log_normalised(counts(seed=1))
    adata.write_h5ad(p)
    return p


def _ensembl_ids_with_symbols(p: Path) -> Path:
    """CELLxGENE style: Ensembl ids in var_names, the symbols in var["feature_name"]."""
    var = pd.DataFrame({"feature_name": GENES}, index=[f"ENSG{i:011d}" for i in range(N_VARS)])
    adata = ad.AnnData(X=counts(), obs=cells(), var=var)
    adata.write_h5ad(p)
    return p


def _missing_obs_values(p: Path) -> Path:
    obs = cells()
    obs["cell_type"] = obs["cell_type"].cat.add_categories([]).astype(object)
    obs.loc[obs.index[:4], "cell_type"] = np.nan
    obs["cell_type"] = pd.Categorical(obs["cell_type"])
    return write(p, counts(), obs=obs)


CORPUS: dict[str, tuple[Callable[[Path], Path], dict, str]] = {
    "missing_file": (_missing, {}, "file not found"),
    "empty_file": (_empty_file, {}, r"the file is empty \(0 bytes\)"),
    "csv_not_hdf5": (_csv, {}, "not an HDF5 file"),
    "truncated_h5ad": (_truncated, {}, "truncated or corrupt"),
    "hdf5_not_anndata": (_plain_hdf5, {}, "not AnnData: it has no obs/var groups"),
    "anndata_unreadable": (_anndata_groups_but_garbage, {}, "AnnData cannot read it"),
    "no_cells": (_no_cells, {}, r"no cells \(0 observations\)"),
    "no_genes": (_no_genes, {}, r"no genes \(0 variables\)"),
    "nan_dense": (_nan_dense, {}, r"\.X has 1 non-finite value \(NaN or infinity\)"),
    "inf_sparse": (_inf_sparse, {}, r"\.X has 1 non-finite value \(NaN or infinity\)"),
    "nan_in_last_block": (_nan_in_last_block, {"block_values": 7}, r"\.X has 1 non-finite value \(NaN or infinity\)"),
    "negative": (_negative, {}, r"\.X has 1 negative value,"),
    "log_normalised": (_log_normalised, {}, r"^\.X holds no raw counts: \d+ values in \.X are not whole numbers"),
    "scaled_x_lognorm_raw": (_scaled_x_lognorm_raw, {}, r"\.raw\.X and \.X hold no raw counts"),
    "duplicate_genes": (_duplicate_genes, {}, r"duplicate gene names .*GENE0"),
    "case_duplicate_genes": (_case_duplicate_genes, {}, r"duplicate gene names .*compared upper-cased: GENE0"),
    "ensembl_ids": (_ensembl_ids, {"model_genes": MODEL_GENES}, r"gene overlap with the model is 0\.0% \(0 of 30"),
    "low_overlap": (_third_of_the_genes, {"model_genes": MODEL_GENES, "min_gene_overlap": 0.5}, r"33\.3% \(10 of 30"),
    "missing_obs_column": (
        _counts,
        {"required_obs": {"bulk_labels": None}},
        r"obs column 'bulk_labels' is missing \(columns: cell_type, donor, depth\)",
    ),
    "duplicate_cells": (_duplicate_cells, {}, r"duplicate cell names in obs_names \(20 names used more than once, e\.g\. c0"),
    "gzipped_h5ad": (_gzipped, {}, r"gzip-compressed"),
    "directory": (_directory, {}, r"^a directory, not a file$"),
    "zarr_store": (_zarr_store, {}, r"a directory, not a file: it looks like a zarr store"),
    "lognorm_with_other_layers": (_lognorm_with_layers, {}, r"^\.X holds no raw counts"),
    "ensembl_ids_symbols_in_column": (
        _ensembl_ids_with_symbols,
        {"model_genes": MODEL_GENES},
        r"gene overlap with the model is 0\.0% .*genes \(var_names\) look like ENSG",
    ),
    "gene_name_column_missing": (
        _counts,
        {"gene_name_column": "feature_name"},
        r"gene_name_column 'feature_name' is not a column of the var of \.X \(columns: none\)",
    ),
    "nan_is_not_a_required_value": (
        _missing_obs_values,
        {"required_obs": {"cell_type": ["nan"]}},
        r"obs column 'cell_type' has no cells with value\(s\) 'nan' \(values: B, Mono, NK, T\)",
    ),
    "missing_obs_value": (
        _counts,
        {"required_obs": {"cell_type": ["B", "Dendritic"]}},
        r"obs column 'cell_type' has no cells with value\(s\) 'Dendritic' \(values: B, Mono, NK, T\)",
    ),
}


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_storage_validation_rejects_broken_input(case: str, tmp_path: Path) -> None:
    build, kwargs, problem = CORPUS[case]
    path = build(tmp_path / f"{case}.h5ad")

    with pytest.raises(InputValidationError) as caught:
        validate_h5ad(path, **kwargs)

    error = caught.value
    assert error.path == str(path)
    assert error.fix  # every error says what to do
    assert str(error) == f"{path}: {error.problem}. Fix: {error.fix}"
    assert re.search(problem, error.problem), error.problem


# The fix each of these names, beyond the problem the corpus checks.
FIXES = {
    "duplicate_cells": r"adata\.obs_names_make_unique\(\)",
    "gzipped_h5ad": r"gunzip -c gzipped_h5ad\.h5ad > gzipped_h5ad\.decompressed\.h5ad",
    "directory": r"name the \.h5ad file itself, not the directory that holds it \(it holds inside\.h5ad\)",
    "zarr_store": r"anndata\.read_zarr\('.*zarr_store\.zarr'\)\.write_h5ad\('zarr_store\.h5ad'\)",
    "lognorm_with_other_layers": r"layers \('spliced'\) holds the raw counts, store it as layers\['counts'\] "
    r"\(adata\.layers\['counts'\] = adata\.layers\['spliced'\]\)",
    "ensembl_ids_symbols_in_column": r"^set gene_name_column='feature_name': var\['feature_name'\] holds 30 of the 30",
}


@pytest.mark.parametrize("case", sorted(FIXES))
def test_storage_validation_fix_says_what_to_do(case: str, tmp_path: Path) -> None:
    build, kwargs, _ = CORPUS[case]
    path = build(tmp_path / f"{case}.h5ad")

    with pytest.raises(InputValidationError) as caught:
        validate_h5ad(path, **kwargs)

    assert re.search(FIXES[case], caught.value.fix), caught.value.fix


def test_storage_validation_corpus_is_big_enough() -> None:
    assert len(CORPUS) >= 12


# -- good inputs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make_x",
    [lambda x: x, sp.csr_matrix, sp.csc_matrix, lambda x: x.astype(np.int32)],
    ids=["dense", "csr", "csc", "int32"],
)
def test_storage_validation_accepts_counts_in_x(make_x, tmp_path: Path) -> None:
    path = write(tmp_path / "ok.h5ad", make_x(counts()))

    facts = validate_h5ad(
        path, model_genes=MODEL_GENES, required_obs={"cell_type": ["B", "T"], "donor": None}, block_values=50
    )

    assert (facts.n_obs, facts.n_vars) == (N_OBS, N_VARS)
    assert facts.counts_location == "X" and facts.matrix_used == "X"
    assert facts.gene_overlap == 1.0 and facts.genes_matched == 30 and facts.model_genes == 30
    assert facts.max_value == counts().max()
    cell_type = facts.obs_column("cell_type")
    assert cell_type.kind == "categorical" and cell_type.value_counts == {"B": 10, "Mono": 10, "NK": 10, "T": 10}
    assert facts.obs_column("depth").kind == "numeric" and facts.obs_column("depth").value_counts == {
        str(v): 1 for v in (np.arange(N_OBS) * 1.5)
    }


def test_storage_validation_finds_counts_in_raw_when_x_is_normalised(tmp_path: Path) -> None:
    raw = counts()
    path = write(tmp_path / "ok.h5ad", sp.csr_matrix(log_normalised(raw)), raw_X=sp.csr_matrix(raw))

    facts = validate_h5ad(path, model_genes=MODEL_GENES)

    assert facts.counts_location == "raw.X" and facts.matrix_used == "raw.X" and facts.sparse


def test_storage_validation_accepts_normalised_values_when_told(tmp_path: Path) -> None:
    path = write(tmp_path / "lognorm.h5ad", log_normalised(counts()))

    facts = validate_h5ad(path, counts_required=False)

    assert facts.counts_location is None and facts.matrix_used == "X"


def test_storage_validation_overlap_at_threshold_passes(tmp_path: Path) -> None:
    path = _third_of_the_genes(tmp_path / "third.h5ad")

    facts = validate_h5ad(path, model_genes=MODEL_GENES, min_gene_overlap=0.3)

    assert facts.gene_overlap == pytest.approx(1 / 3)


def test_storage_validation_gene_list_reading(tmp_path: Path) -> None:
    good, bad, empty = tmp_path / "genes.pkl", tmp_path / "bad.pkl", tmp_path / "empty.pkl"
    good.write_bytes(pickle.dumps(["cd3e", "MS4A1"]))
    bad.write_bytes(b"not a pickle")
    empty.write_bytes(pickle.dumps([]))

    assert read_gene_list(good) == ["CD3E", "MS4A1"]
    with pytest.raises(InputValidationError, match="not a readable pickled gene list"):
        read_gene_list(bad)
    with pytest.raises(InputValidationError, match="non-empty list of gene symbol strings"):
        read_gene_list(empty)
    with pytest.raises(InputValidationError, match="gene list file not found"):
        read_gene_list(tmp_path / "nope.pkl")


def test_storage_validation_prefers_counts_in_x_over_lognormalised_raw(tmp_path: Path) -> None:
    """The issue's file: counts in .X, log-normalised .raw: STACK must read .X, and the facts say so."""
    raw = counts()
    path = write(tmp_path / "x_counts.h5ad", sp.csr_matrix(raw), raw_X=sp.csr_matrix(log_normalised(raw)))

    facts = validate_h5ad(path, model_genes=MODEL_GENES)

    assert facts.counts_location == "X" and facts.matrix_used == "X"


def test_storage_validation_finds_counts_in_the_counts_layer(tmp_path: Path) -> None:
    raw = counts()
    adata = ad.AnnData(X=log_normalised(raw), obs=cells(), var=pd.DataFrame(index=GENES))
    adata.layers["counts"] = sp.csr_matrix(raw)
    adata.raw = ad.AnnData(X=sp.csr_matrix(log_normalised(raw)), obs=adata.obs, var=adata.var)
    adata.write_h5ad(tmp_path / "layer.h5ad")

    facts = validate_h5ad(tmp_path / "layer.h5ad", model_genes=MODEL_GENES, block_values=50)

    assert facts.counts_location == "layers/counts" and facts.matrix_used == "layers/counts"
    assert facts.sparse and facts.max_value == raw.max() and facts.n_vars == N_VARS


def test_storage_validation_matches_genes_by_the_gene_name_column(tmp_path: Path) -> None:
    path = _ensembl_ids_with_symbols(tmp_path / "cellxgene.h5ad")

    facts = validate_h5ad(path, model_genes=MODEL_GENES, gene_name_column="feature_name")

    assert facts.gene_overlap == 1.0 and facts.gene_name_column == "feature_name"
    assert facts.var_names_sample[:2] == GENES[:2]


def test_storage_validation_gene_name_column_of_raw_falls_back_to_var(tmp_path: Path) -> None:
    """raw.X's genes are named by raw.var; a column only var has applies when both list the same genes."""
    raw = counts()
    var = pd.DataFrame({"feature_name": GENES}, index=[f"ENSG{i:011d}" for i in range(N_VARS)])
    adata = ad.AnnData(X=log_normalised(raw), obs=cells(), var=var)
    adata.raw = ad.AnnData(X=sp.csr_matrix(raw), obs=adata.obs, var=pd.DataFrame(index=var.index))
    adata.write_h5ad(tmp_path / "raw.h5ad")

    facts = validate_h5ad(tmp_path / "raw.h5ad", model_genes=MODEL_GENES, gene_name_column="feature_name")

    assert facts.matrix_used == "raw.X" and facts.gene_overlap == 1.0


def test_storage_validation_missing_obs_values_are_no_value(tmp_path: Path) -> None:
    path = _missing_obs_values(tmp_path / "nan.h5ad")

    facts = validate_h5ad(path, required_obs={"cell_type": ["B"]})

    cell_type = facts.obs_column("cell_type")
    assert "nan" not in cell_type.value_counts and cell_type.n_missing == 4
    assert sum(cell_type.value_counts.values()) == N_OBS - 4
