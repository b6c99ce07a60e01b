"""The job's grounding outputs end to end: synthetic control, DE table, identity markers, backtest."""

from __future__ import annotations

import hashlib
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from inference.contract import (
    DE_COLUMNS,
    DE_FILE,
    GENE_MEANS_FILE,
    MANIFEST_FILE,
    PREDICTIONS_FILE,
    SUMMARY_FILE,
    JobManifest,
    PredictionSummary,
)
from inference.de import PAIRED_TEST, UNPAIRED_TEST
from tests.inference.conftest import INPUT_GENES, MODEL_GENES, TinyInputs, read_json, run_job_process

MARKERS = [f"G{i}" for i in range(10, 16)]  # raised in T cells: the query type's own markers


def _cells(rng: np.random.Generator, n: int, condition: list[str], cell_type: list[str], prefix: str) -> ad.AnnData:
    types = rng.choice(cell_type, n)
    mean = np.full((n, len(INPUT_GENES)), 3.0)
    mean[np.ix_(types == "T", [INPUT_GENES.index(g) for g in MARKERS])] = 30.0
    counts = rng.poisson(mean).astype(np.float32)
    obs = pd.DataFrame({"condition": rng.choice(condition, n), "cell_type": types}, index=[f"{prefix}{i}" for i in range(n)])
    return ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=INPUT_GENES))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("grounding-inputs")
    rng = np.random.default_rng(3)
    _cells(rng, 24, ["control"], ["T"], "q").write_h5ad(root / "query.h5ad")
    _cells(rng, 80, ["control", "treated"], ["T", "B"], "p").write_h5ad(root / "prompt.h5ad")
    return {"query": root / "query.h5ad", "prompt": root / "prompt.h5ad"}


def _spec(tiny: TinyInputs, data: dict[str, Path], prefix: Path, **overrides):
    fields = dict(query_uri=str(data["query"]), prompt_uri=str(data["prompt"]), split_column="condition",
                  cell_type_column="cell_type", query_cell_type="T")
    return tiny.spec(prefix, **{**fields, **overrides})


@pytest.fixture(scope="module")
def synthetic_run(tiny: TinyInputs, data, tmp_path_factory: pytest.TempPathFactory) -> Path:
    prefix = tmp_path_factory.mktemp("synthetic") / "run"
    proc = run_job_process(_spec(tiny, data, prefix, control_value="control", backtest=True))
    assert proc.returncode == 0, proc.stderr
    return prefix


def test_synthetic_control_is_generated_in_the_same_job(synthetic_run: Path, data) -> None:
    pred = ad.read_h5ad(synthetic_run / PREDICTIONS_FILE)
    query = ad.read_h5ad(data["query"])
    assert list(pred.obs["split_value"].cat.categories) == ["treated", "control"]  # treated first, then control
    for value in ("treated", "control"):
        rows = pred.obs[pred.obs["split_value"] == value]
        assert list(rows["query_cell"]) == list(query.obs_names)


def test_de_table_is_in_the_manifest_and_paired(synthetic_run: Path) -> None:
    manifest = JobManifest.model_validate(read_json(synthetic_run / MANIFEST_FILE))
    assert set(manifest.outputs) == {PREDICTIONS_FILE, SUMMARY_FILE, DE_FILE, GENE_MEANS_FILE}
    assert hashlib.sha256((synthetic_run / DE_FILE).read_bytes()).hexdigest() == manifest.outputs[DE_FILE]
    assert {"compute_s", "de_s", "markers_s", "backtest_s"} <= set(manifest.timings_s)
    de = pd.read_parquet(synthetic_run / DE_FILE)
    assert list(de.columns) == DE_COLUMNS
    assert set(de["split_value"]) == {"treated"}  # the control is the reference, not a context
    assert set(de["reference"]) == {"synthetic_control"} and set(de["test"]) == {PAIRED_TEST}
    # the background: model genes the query input has (G10..G59), never the ten it lacks
    assert sorted(de["gene"]) == sorted(g for g in MODEL_GENES if g in INPUT_GENES)
    assert de["q_value"].between(0, 1).all() and (de["q_value"] >= de["p_value"] - 1e-12).all()


def test_summary_has_identity_markers_and_a_cell_eval_backtest(synthetic_run: Path) -> None:
    summary = PredictionSummary.model_validate(read_json(synthetic_run / SUMMARY_FILE))
    assert summary.control_value == "control"
    [split] = summary.splits
    assert split.split_value == "treated" and split.reference == "synthetic_control"
    assert split.reference_value == "control" and split.genes_tested == 50
    assert identity_ok(summary)
    bt = summary.backtest
    assert bt is not None and bt.not_assessed is None, bt
    assert bt.tool.startswith("cell-eval ") and bt.held_out_cells > 0
    [ctx] = bt.contexts
    assert ctx.split_value == "treated" and ctx.real_cells == bt.held_out_cells and ctx.predicted_cells == 24
    assert {"mse", "mae", "pearson_delta"} <= set(ctx.metrics)


def identity_ok(summary: PredictionSummary) -> bool:
    identity = summary.identity
    assert identity is not None and identity.cell_type == "T" and identity.cells_other > 0
    assert set(identity.genes[: len(MARKERS)]) == set(MARKERS)  # the planted markers rank first
    return True


def test_held_out_cells_are_not_shown_to_the_model(tiny: TinyInputs, data, synthetic_run: Path, tmp_path: Path) -> None:
    """Removing the held-out cells from the prompt by hand gives the same predictions: they were never shown."""
    prompt = ad.read_h5ad(data["prompt"])
    held = ((prompt.obs["condition"] == "treated") & (prompt.obs["cell_type"] == "T")).to_numpy()
    assert held.any()
    prompt[~held].copy().write_h5ad(tmp_path / "prompt.h5ad")
    proc = run_job_process(_spec(tiny, data, tmp_path / "out", prompt_uri=str(tmp_path / "prompt.h5ad"),
                                 control_value="control"))
    assert proc.returncode == 0, proc.stderr
    ours = ad.read_h5ad(synthetic_run / PREDICTIONS_FILE)
    by_hand = ad.read_h5ad(tmp_path / "out" / PREDICTIONS_FILE)
    assert np.array_equal(ours.X.toarray(), by_hand.X.toarray())


def test_absent_control_value_exits_2_naming_the_values(tiny: TinyInputs, data, tmp_path: Path) -> None:
    proc = run_job_process(_spec(tiny, data, tmp_path / "out", control_value="PBS"))
    assert proc.returncode == 2
    assert "'PBS'" in proc.stderr and "control" in proc.stderr and "treated" in proc.stderr
    assert not (tmp_path / "out" / PREDICTIONS_FILE).exists()


def test_without_control_value_the_de_is_unpaired(tiny: TinyInputs, data, tmp_path: Path) -> None:
    proc = run_job_process(_spec(tiny, data, tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    de = pd.read_parquet(tmp_path / "out" / DE_FILE)
    assert set(de["split_value"]) == {"control", "treated"}  # every context is treated against the query input
    assert set(de["reference"]) == {"query_input"}
    assert de["test"].str.startswith(UNPAIRED_TEST).all() and de["test"].str.contains("pdex").all()
    summary = PredictionSummary.model_validate(read_json(tmp_path / "out" / SUMMARY_FILE))
    assert summary.control_value is None and summary.backtest is None
    assert all(s.reference == "query_input" and s.reference_value is None for s in summary.splits)
