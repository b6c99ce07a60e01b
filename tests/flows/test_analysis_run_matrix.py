"""One matrix, chosen once: what validation found is what the GPU job and the report's plot read.

The issue's file (counts in .X, log-normalised values in .raw) ran to Completed on .raw; CELLxGENE
files (Ensembl ids in var_names, symbols in var["feature_name"]) were refused for lack of overlap.
"""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from clients.settings import Settings, get_settings
from clients.storage import local_path_of
from flows.analysis_run import analysis_run
from tasks.request import AnalysisRequest
from inference.contract import JobManifest
from tasks.prediction_plot import mean_log1p_cpm, query_means_on_genes, what_the_job_read
from tests.small_inputs import Inputs, make_inputs


def log_normalised(x: sp.spmatrix) -> sp.csr_matrix:
    x = sp.csr_matrix(x, dtype=np.float32)
    depth = np.asarray(x.sum(axis=1)).ravel()
    scaled = sp.diags(1e4 / np.maximum(depth, 1)) @ x
    scaled.data = np.log1p(scaled.data)
    return sp.csr_matrix(scaled, dtype=np.float32)


def cellxgene_with_lognormalised_raw(source: Path, out: Path) -> Path:
    """Counts in .X, log-normalised .raw, Ensembl ids in var_names and the symbols in var["feature_name"]."""
    out.parent.mkdir(parents=True, exist_ok=True)
    adata = ad.read_h5ad(source)
    symbols = list(adata.var_names)
    adata.var = pd.DataFrame({"feature_name": symbols}, index=[f"ENSG{i:011d}" for i in range(len(symbols))])
    adata.raw = ad.AnnData(X=log_normalised(adata.X), obs=adata.obs, var=adata.var)
    adata.write_h5ad(out)
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    return make_inputs(tmp_path_factory.mktemp("inputs"))


def test_the_plot_reads_the_matrix_and_gene_names_the_job_read(inputs: Inputs, tmp_path: Path) -> None:
    query = ad.read_h5ad(cellxgene_with_lognormalised_raw(inputs.h5ad, tmp_path / "q.h5ad"))
    genes = list(query.var["feature_name"][:5]) + ["NOT_A_GENE"]
    predictions = ad.AnnData(X=np.zeros((1, len(genes))), var=pd.DataFrame(index=genes))
    predictions.uns["stack_job"] = {"query_matrix": "X", "gene_name_column": "feature_name"}

    means = query_means_on_genes(query, genes, *what_the_job_read(predictions))

    np.testing.assert_allclose(means, [*mean_log1p_cpm(query.X)[:5], 0.0])


def test_a_run_reads_the_counts_validation_found_and_the_gene_name_column(
    prefect_api: None, settings: Settings, inputs: Inputs, monkeypatch: pytest.MonkeyPatch
) -> None:
    h5ad = cellxgene_with_lognormalised_raw(inputs.h5ad, settings.data_dir / "cellxgene.h5ad")
    readable = [settings.data_dir.as_uri(), inputs.gene_list.parent.as_uri(), inputs.checkpoint.parent.as_uri()]
    monkeypatch.setenv("STACKFLOWS_API__ALLOWED_URI_PREFIXES", json.dumps(readable))
    get_settings.cache_clear()
    body = inputs.request_body("How do monocytes look among B cells?", prompt_uri=h5ad.as_uri(), query_uri=h5ad.as_uri())
    request = AnalysisRequest.model_validate({**body, "gene_name_column": "feature_name"})

    flow = analysis_run.with_options(result_storage=settings.data_dir / "prefect-results")
    report = flow(request)

    manifest = JobManifest.model_validate_json(local_path_of(report.outputs["manifest"]).read_text())
    assert (manifest.spec.prompt_matrix, manifest.spec.query_matrix) == ("X", "X")  # not the log-normalised .raw
    assert manifest.spec.counts_required and manifest.spec.gene_name_column == "feature_name"
    predictions = ad.read_h5ad(local_path_of(report.outputs["predictions"]), backed="r")
    assert what_the_job_read(predictions) == ("X", "feature_name")
