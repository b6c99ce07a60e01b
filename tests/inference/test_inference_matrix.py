"""One matrix: the job reads exactly the matrix the spec names, refuses one that is not counts, and
matches genes by the spec's gene-name column (CELLxGENE files) as arc-stack's --gene-name-col does."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from inference.contract import PREDICTIONS_FILE, PROGRESS_FILE, JobProgress
from inference.data import InputError, align_counts, apply_obs_filter, select_split_values
from inference.stack_job import run_job
from tests.inference.conftest import INPUT_GENES, MODEL_GENES, TinyInputs, run_job_process


def log_normalised(adata: ad.AnnData) -> sp.csr_matrix:
    x = adata.X.toarray()
    return sp.csr_matrix(np.log1p(x / np.maximum(x.sum(1, keepdims=True), 1) * 1e4).astype(np.float32))


def counts_in_x_lognorm_in_raw(source: Path, out: Path) -> Path:
    """The issue's file: counts in .X, log-normalised values in .raw (same genes)."""
    adata = ad.read_h5ad(source)
    adata.raw = ad.AnnData(X=log_normalised(adata), obs=adata.obs, var=adata.var)
    adata.write_h5ad(out)
    return out


def counts_in_layer(source: Path, out: Path) -> Path:
    """scanpy's habit: layers["counts"] = X.copy(), then X normalised."""
    adata = ad.read_h5ad(source)
    adata.layers["counts"] = adata.X.copy()
    adata.X = log_normalised(adata)
    adata.write_h5ad(out)
    return out


def cellxgene_style(source: Path, out: Path) -> Path:
    """Ensembl ids in var_names, the symbols in var["feature_name"]."""
    adata = ad.read_h5ad(source)
    adata.var = pd.DataFrame(
        {"feature_name": pd.Categorical(INPUT_GENES)}, index=[f"ENSG{i:011d}" for i in range(len(INPUT_GENES))]
    )
    adata.write_h5ad(out)
    return out


def predictions(prefix: Path) -> np.ndarray:
    return ad.read_h5ad(prefix / PREDICTIONS_FILE).X.toarray()


@pytest.fixture(scope="module")
def reference(tiny: TinyInputs, tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """Predictions on the plain inputs (counts in X, nothing else): what every variant must give."""
    prefix = tmp_path_factory.mktemp("reference") / "run"
    run_job(tiny.spec(prefix))
    return predictions(prefix)


def test_inference_reads_x_when_the_spec_names_it_though_raw_exists(
    tiny: TinyInputs, reference: np.ndarray, tmp_path: Path
) -> None:
    query = counts_in_x_lognorm_in_raw(tiny.query, tmp_path / "query.h5ad")
    prompt = counts_in_x_lognorm_in_raw(tiny.prompt, tmp_path / "prompt.h5ad")
    spec = tiny.spec(tmp_path / "out", query_uri=str(query), prompt_uri=str(prompt), query_matrix="X", prompt_matrix="X")

    run_job(spec)

    np.testing.assert_array_equal(predictions(tmp_path / "out"), reference)
    assert ad.read_h5ad(tmp_path / "out" / PREDICTIONS_FILE).uns["stack_job"]["query_matrix"] == "X"


def test_inference_refuses_a_matrix_that_is_not_counts_before_any_model_work(
    tiny: TinyInputs, tmp_path: Path
) -> None:
    """The issue's run: no matrix named, so arc-stack's choice (.raw) -- log-normalised: exit 2, no outputs."""
    query = counts_in_x_lognorm_in_raw(tiny.query, tmp_path / "query.h5ad")
    spec = tiny.spec(tmp_path / "out", query_uri=str(query))

    done = run_job_process(spec)

    assert done.returncode == 2, done.stderr
    assert "raw.X is not raw counts" in done.stderr and "point query_matrix at the counts" in done.stderr
    assert not (tmp_path / "out" / PREDICTIONS_FILE).exists()
    progress = JobProgress.model_validate_json((tmp_path / "out" / PROGRESS_FILE).read_text())
    assert progress.phase == "failed" and progress.chunks_done == 0


def test_inference_reads_normalised_values_only_when_counts_are_not_required(tiny: TinyInputs, tmp_path: Path) -> None:
    query = counts_in_x_lognorm_in_raw(tiny.query, tmp_path / "query.h5ad")
    adata = ad.read_h5ad(query)

    read = align_counts(adata, MODEL_GENES, name="query", matrix="raw.X", counts_required=False)

    assert read.matrix == "raw.X" and not np.array_equal(read.counts.toarray(), np.round(read.counts.toarray()))
    with pytest.raises(InputError, match=r"query: raw\.X is not raw counts: \d+ of its values"):
        align_counts(adata, MODEL_GENES, name="query", matrix="raw.X")


def test_inference_reads_counts_from_a_layer(tiny: TinyInputs, reference: np.ndarray, tmp_path: Path) -> None:
    query = counts_in_layer(tiny.query, tmp_path / "query.h5ad")
    prompt = counts_in_layer(tiny.prompt, tmp_path / "prompt.h5ad")
    spec = tiny.spec(
        tmp_path / "out", query_uri=str(query), prompt_uri=str(prompt),
        query_matrix="layers/counts", prompt_matrix="layers/counts",
    )

    run_job(spec)

    np.testing.assert_array_equal(predictions(tmp_path / "out"), reference)


def test_inference_spec_naming_a_missing_matrix_is_refused(tiny: TinyInputs, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="names the matrix layers/counts, which the file does not have; set query_matrix"):
        run_job(tiny.spec(tmp_path / "out", query_matrix="layers/counts"))


def test_inference_gene_name_column_matches_cellxgene_files(
    tiny: TinyInputs, reference: np.ndarray, tmp_path: Path
) -> None:
    query = cellxgene_style(tiny.query, tmp_path / "query.h5ad")
    prompt = cellxgene_style(tiny.prompt, tmp_path / "prompt.h5ad")

    run_job(tiny.spec(tmp_path / "out", query_uri=str(query), prompt_uri=str(prompt), gene_name_column="feature_name"))

    np.testing.assert_array_equal(predictions(tmp_path / "out"), reference)
    with pytest.raises(InputError, match=r"var\['feature_name'\] holds 50 of them: set gene_name_column='feature_name'"):
        run_job(tiny.spec(tmp_path / "again", query_uri=str(query), prompt_uri=str(prompt)))
    with pytest.raises(InputError, match="gene_name_column 'symbol' is not a column of the var of X"):
        run_job(tiny.spec(tmp_path / "third", query_uri=str(query), prompt_uri=str(prompt), gene_name_column="symbol"))


def test_inference_gene_name_column_for_raw_comes_from_var_when_raw_var_lacks_it(tiny: TinyInputs, tmp_path: Path) -> None:
    """CELLxGENE keeps feature_name in var; raw.var (same genes) often has no columns: var's apply."""
    adata = ad.read_h5ad(cellxgene_style(tiny.query, tmp_path / "query.h5ad"))
    adata.raw = ad.AnnData(X=adata.X.copy(), obs=adata.obs, var=pd.DataFrame(index=adata.var_names))

    read = align_counts(adata, MODEL_GENES, name="query", matrix="raw.X", gene_name_column="feature_name")

    assert read.genes_present.sum() == 50
    column = INPUT_GENES.index(MODEL_GENES[0])
    np.testing.assert_array_equal(read.counts[:, [0]].toarray().ravel(), adata.raw.X[:, column].toarray().ravel())


def test_inference_missing_obs_value_is_no_context_and_matches_no_filter() -> None:
    obs = pd.DataFrame({"donor": pd.Categorical(["d1", None, "d2", "d1"])}, index=list("abcd"))
    adata = ad.AnnData(X=np.ones((4, 2), dtype=np.float32), obs=obs)

    assert select_split_values(obs, "donor", None, name="prompt") == ["d1", "d2"]
    with pytest.raises(InputError, match=r"split values \['nan'\] are not in obs\['donor'\]"):
        select_split_values(obs, "donor", ["nan"], name="prompt")
    with pytest.raises(InputError, match="no cells match the obs filter"):
        apply_obs_filter(adata, {"donor": ["nan"]}, name="prompt")
    with pytest.raises(InputError, match="every cell's is missing"):
        select_split_values(pd.DataFrame({"donor": [np.nan, np.nan]}), "donor", None, name="prompt")
