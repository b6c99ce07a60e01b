"""The query-vs-predictions plot drawn from the job's gene means: the same points (and the same PNG)
as computing them from the full matrices, which the flow no longer reads; no gene means, no plot."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from prefect import flow
from prefect.context import FlowRunContext

from clients.settings import Settings
from clients.storage import join_uri, local_path_of
from inference.contract import GENE_MEANS_COLUMNS
from tasks.prediction_plot import (
    Panel,
    draw_panels,
    gene_means_table,
    mean_log1p_cpm,
    panels,
    plot_predictions_vs_query,
    query_means_on_genes,
    what_the_job_read,
)
from tasks.report import publish_report
from tests.report.run_page import run_artifacts
from tests.report.test_report_publish import hostile_report

MODEL_GENES = ["CD14", "LYZ", "NOTINQUERY", "S100A8", "ACTB"]
CONTEXTS = ["IFN-gamma", "PBS"]


def job_like_data() -> tuple[ad.AnnData, ad.AnnData]:
    """A query with counts in raw.X and symbols in var["feature_name"] (as the job recorded reading
    them), of which cells 0-5 were generated, and predictions for two contexts on the model's genes."""
    rng = np.random.default_rng(7)
    raw_counts = rng.poisson(2.0, size=(8, 4)).astype(np.float32)
    raw_counts[3] = 0  # a cell with no counts: CPM 0, not NaN
    symbols = ["ACTB", "lyz", "CD14", "S100A8"]  # other order and case than the model's
    var = pd.DataFrame({"feature_name": symbols}, index=[f"ENSG{i}" for i in range(4)])
    query = ad.AnnData(
        X=np.log1p(raw_counts), obs=pd.DataFrame(index=[f"q{i}" for i in range(8)]), var=var
    )
    query.raw = ad.AnnData(X=sp.csr_matrix(raw_counts), var=var)
    generated = [f"q{i}" for i in range(6)]
    predicted = rng.poisson(3.0, size=(12, len(MODEL_GENES))).astype(np.float32)
    predictions = ad.AnnData(
        X=sp.csr_matrix(predicted),
        obs=pd.DataFrame(
            {"query_cell": generated * 2, "split_value": [CONTEXTS[0]] * 6 + [CONTEXTS[1]] * 6},
            index=[f"p{i}" for i in range(12)],
        ),
        var=pd.DataFrame(index=MODEL_GENES),
    )
    predictions.uns["stack_job"] = {"query_matrix": "raw.X", "gene_name_column": "feature_name"}
    return query, predictions


def dense_mean_log1p_cpm(counts: np.ndarray) -> np.ndarray:
    """The plot's measure written out plainly: mean over cells of log1p(counts / depth * 1e6)."""
    counts = counts.astype(np.float64)
    depth = counts.sum(axis=1, keepdims=True)
    cpm = np.divide(counts * 1e6, depth, out=np.zeros_like(counts, dtype=float), where=depth > 0)
    return np.log1p(cpm).mean(axis=0)


def old_code_panels(query: ad.AnnData, predictions: ad.AnnData) -> list[Panel]:
    """What publish_report computed before, from the full matrices, with the code it used then."""
    query = query[query.obs_names.isin(predictions.obs["query_cell"])]
    x = query_means_on_genes(query, list(predictions.var_names), *what_the_job_read(predictions))
    contexts = predictions.obs["split_value"].astype(str)
    return [Panel(c, x, mean_log1p_cpm(predictions[contexts == c].X)) for c in dict.fromkeys(contexts)]


def plain_panels(query: ad.AnnData, predictions: ad.AnnData) -> list[Panel]:
    """The same points by the formula alone: the generated query cells' raw counts on the model genes
    (matched by upper-cased symbol; a missing gene is 0) against each context's predictions."""
    raw = query.raw.X.toarray()[: 6]
    by_symbol = {s.upper(): i for i, s in enumerate(query.raw.var["feature_name"])}
    x_all = dense_mean_log1p_cpm(raw)
    x = np.array([x_all[by_symbol[g]] if g in by_symbol else 0.0 for g in MODEL_GENES])
    result = []
    for context in CONTEXTS:
        cells = (predictions.obs["split_value"] == context).to_numpy()
        result.append(Panel(context, x, dense_mean_log1p_cpm(predictions.X.toarray()[cells])))
    return result


def stored_table(tmp_path: Path) -> pd.DataFrame:
    """The table as the job stores it: written to parquet and read back."""
    query, predictions = job_like_data()
    gene_means_table(query, predictions).to_parquet(tmp_path / "gene_means.parquet", index=False)
    return pd.read_parquet(tmp_path / "gene_means.parquet")


def test_the_gene_means_table_has_the_contracts_rows(tmp_path: Path) -> None:
    table = stored_table(tmp_path)

    assert list(table.columns) == GENE_MEANS_COLUMNS
    assert table.groupby("source", sort=False).size().to_dict() == {"query_input": 5, "prediction": 10}
    assert table["split_value"].isna().sum() == 5  # the query input's rows have no context
    assert table.loc[table["gene"] == "NOTINQUERY", "mean_log1p_cpm"].iloc[0] == 0.0


def test_panels_from_the_table_are_the_numbers_of_the_full_matrices(tmp_path: Path) -> None:
    query, predictions = job_like_data()
    drawn = panels(stored_table(tmp_path))

    assert [p.context for p in drawn] == CONTEXTS
    for got, old, plain in zip(drawn, old_code_panels(query, predictions), plain_panels(query, predictions)):
        assert got.context == old.context == plain.context
        np.testing.assert_array_equal(got.query, old.query)  # bit for bit what the report drew before
        np.testing.assert_array_equal(got.predicted, old.predicted)
        # the formula written out (float64; the helper scales each cell at the counts' float32)
        np.testing.assert_allclose(got.query, plain.query, rtol=1e-7)
        np.testing.assert_allclose(got.predicted, plain.predicted, rtol=1e-7)


def test_the_png_drawn_from_the_table_is_the_png_of_the_full_matrices(tmp_path: Path) -> None:
    query, predictions = job_like_data()

    from_table = plot_predictions_vs_query(stored_table(tmp_path), tmp_path / "from_table.png").read_bytes()
    from_matrices = draw_panels(old_code_panels(query, predictions), tmp_path / "from_matrices.png").read_bytes()

    assert from_table.startswith(b"\x89PNG\r\n\x1a\n")
    assert from_table == from_matrices


def test_a_table_without_the_query_input_is_refused_by_name(tmp_path: Path) -> None:
    table = stored_table(tmp_path)
    with pytest.raises(ValueError, match="gs://b/gene_means.parquet: no rows with source 'query_input'"):
        panels(table[table["source"] == "prediction"], name="gs://b/gene_means.parquet")
    with pytest.raises(ValueError, match="columns \\['mean_log1p_cpm'\\] are missing"):
        panels(table.drop(columns="mean_log1p_cpm"))


def test_without_gene_means_the_report_has_no_plot_and_says_why(
    prefect_api: None, settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Embed mode writes no gene means: the report is published without the plot, and the log says so."""

    @flow(name="publish-report-without-gene-means")
    def run() -> tuple:
        run_id = FlowRunContext.get().flow_run.id
        prefix = join_uri(settings.storage_root, "runs", str(run_id), "report")
        return publish_report(hostile_report("file:///outputs/predictions.h5ad"), prefix), run_id

    with caplog.at_level("INFO"):
        report, run_id = run()

    assert "plot" not in report.outputs and "gene_means" not in report.outputs
    assert not (local_path_of(report.outputs["report_markdown"]).parent / "predictions_vs_query.png").exists()
    assert "Query input vs predictions" not in local_path_of(report.outputs["report_markdown"]).read_text()
    assert "prediction-plot" not in run_artifacts(run_id)
    assert any("plot is left out" in r.getMessage() for r in caplog.records)
