"""The job's bounded-memory pieces: streamed predictions, chunked gene means, sparse reading, preload."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from inference import outputs
from inference.data import align_counts
from inference.gene_means import mean_log1p_cpm
from inference.outputs import PredictionsWriter, read_rows
from inference.preload import Preload


def _counts(rng: np.random.Generator, n: int, genes: int) -> sp.csr_matrix:
    dense = rng.negative_binomial(1, 0.6, size=(n, genes)).astype(np.float32)
    dense[rng.random(n) < 0.05] = 0  # some cells with no counts at all
    return sp.csr_matrix(dense)


def test_streamed_predictions_read_back_as_written_by_anndata(tmp_path: Path, monkeypatch) -> None:
    """Appending contexts in row chunks gives the file write_h5ad would: same X, obs, var, uns."""
    monkeypatch.setattr(outputs, "ROW_CHUNK", 7)  # several appends per context
    rng = np.random.default_rng(1)
    genes = [f"G{i}" for i in range(30)]
    arms = {"a": _counts(rng, 23, 30), "b": _counts(rng, 23, 30)}
    obs = pd.DataFrame(
        {"query_cell": [f"c{i}" for i in range(23)] * 2, "split_value": pd.Categorical(["a"] * 23 + ["b"] * 23),
         "gen_logit": rng.normal(size=46).astype(np.float32)},
        index=[f"c{i}-{v}" for v in arms for i in range(23)],
    )
    uns = {"stack_job": {"mode": "generate", "seed": 3, "precision": "fp32"}}
    writer = PredictionsWriter(tmp_path / "streamed.h5ad", len(genes))
    for arm in arms.values():
        writer.append(arm)
    writer.finish(obs, pd.DataFrame(index=genes), uns)
    expected = ad.AnnData(X=sp.vstack(list(arms.values()), format="csr"), obs=obs, var=pd.DataFrame(index=genes), uns=uns)
    expected.write_h5ad(tmp_path / "whole.h5ad")

    streamed, whole = ad.read_h5ad(tmp_path / "streamed.h5ad"), ad.read_h5ad(tmp_path / "whole.h5ad")
    assert sp.issparse(streamed.X) and (streamed.X != whole.X).nnz == 0 and streamed.X.dtype == np.float32
    pd.testing.assert_frame_equal(streamed.obs, whole.obs)
    pd.testing.assert_frame_equal(streamed.var, whole.var)
    assert streamed.uns["stack_job"] == whole.uns["stack_job"]
    assert (read_rows(tmp_path / "streamed.h5ad", 23, 46) != arms["b"]).nnz == 0  # one context read back


def test_gene_means_in_chunks_equal_the_plot_function_bit_for_bit() -> None:
    from tasks.prediction_plot import mean_log1p_cpm as plot_means

    matrix = _counts(np.random.default_rng(2), 501, 40)
    for rows in (1, 64, 10_000):
        assert np.array_equal(mean_log1p_cpm(matrix, chunk_rows=rows), plot_means(matrix))
    np.testing.assert_allclose(mean_log1p_cpm(matrix.toarray(), chunk_rows=64), plot_means(matrix.toarray()), rtol=1e-12)


@pytest.mark.parametrize("form", ["dense", "csc", "csr"])
def test_counts_are_read_sparse_in_model_gene_order(form: str) -> None:
    """Any stored form gives CSR over the model genes, missing genes empty: the dense read's values."""
    rng = np.random.default_rng(3)
    dense = rng.poisson(1.0, size=(12, 8)).astype(np.float32)
    stored = {"dense": dense, "csc": sp.csc_matrix(dense), "csr": sp.csr_matrix(dense)}[form]
    adata = ad.AnnData(X=stored, var=pd.DataFrame(index=[f"g{i}" for i in range(8)]))
    model = ["G5", "MISSING", "G0", "G7", "G2"]

    read = align_counts(adata, model, name="query")

    assert isinstance(read.counts, sp.csr_matrix) and read.counts.dtype == np.float32
    assert read.counts.has_sorted_indices and read.counts.shape == (12, 5)
    expected = np.zeros((12, 5), dtype=np.float32)
    expected[:, [0, 2, 3, 4]] = dense[:, [5, 0, 7, 2]]
    assert np.array_equal(read.counts.toarray(), expected)
    assert list(read.genes_present) == [True, False, True, True, True]


def test_a_failed_background_import_surfaces_with_its_message() -> None:
    preload = Preload(("json", "no_such_module_for_the_job")).start()
    with pytest.raises(ModuleNotFoundError, match="no_such_module_for_the_job"):
        preload.join()


def test_the_preload_takes_only_what_the_run_path_needs() -> None:
    from inference.preload import modules_for

    paired = modules_for("generate", unpaired=False, backtest=False, markers=False)
    assert "stack.model_loading" in paired and "scipy.stats" in paired
    assert not {"pdex", "cell_eval", "scanpy"} & set(paired)
    assert {"pdex", "cell_eval", "scanpy"} <= set(modules_for("generate", unpaired=True, backtest=True, markers=True))
    assert modules_for("embed", unpaired=True, backtest=False, markers=False) == ("stack.model_loading",)
