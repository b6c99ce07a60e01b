"""The STACK job end to end through its real entry point (``python -m inference.stack_job``), on CPU."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from inference.contract import (
    DE_FILE,
    GENE_MEANS_COLUMNS,
    GENE_MEANS_FILE,
    MANIFEST_FILE,
    PREDICTIONS_FILE,
    PROGRESS_FILE,
    SUMMARY_FILE,
    JobManifest,
    JobProgress,
    PredictionSummary,
)
from tests.inference.conftest import MODEL_GENES, REPO, SIZES, TinyInputs, read_json, run_job_process


@pytest.fixture(scope="module")
def generate_run(tiny: TinyInputs, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """One generation job as a process; progress.json is polled while it runs."""
    prefix = tmp_path_factory.mktemp("gen") / "run"
    spec = tiny.spec(prefix)
    log = prefix.parent / "job.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, *spec.to_argv()[1:]], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        phases: list[str] = []
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            progress_file = prefix / PROGRESS_FILE
            if progress_file.exists():  # every read must parse: the file is replaced, never half-written
                phase = JobProgress.model_validate_json(progress_file.read_text()).phase
                if not phases or phases[-1] != phase:
                    phases.append(phase)
            try:
                proc.wait(timeout=0.05)
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            proc.kill()
    assert proc.returncode == 0, log.read_text()
    phases.append(JobProgress.model_validate_json((prefix / PROGRESS_FILE).read_text()).phase)
    return prefix, phases


def test_inference_generate_writes_predictions_in_model_gene_order(generate_run, tiny: TinyInputs) -> None:
    prefix, _ = generate_run
    pred = ad.read_h5ad(prefix / PREDICTIONS_FILE)
    query = ad.read_h5ad(tiny.query)
    assert pred.shape == (2 * query.n_obs, len(MODEL_GENES))  # one row per query cell per context
    assert list(pred.var_names) == MODEL_GENES
    assert sorted(pred.obs["split_value"].unique()) == ["d1", "d2"]
    for value in ("d1", "d2"):
        rows = pred.obs[pred.obs["split_value"] == value]
        assert list(rows["query_cell"]) == list(query.obs_names)
        assert list(rows["cell_type"]) == list(query.obs["cell_type"])
        np.testing.assert_allclose(rows["score"], query.obs["score"])
    X = pred.X.toarray()
    assert np.isfinite(X).all() and (X >= 0).all() and np.array_equal(X, np.round(X))  # NB counts


def test_inference_generate_manifest_summary_and_progress(generate_run) -> None:
    prefix, phases = generate_run
    manifest = JobManifest.model_validate(read_json(prefix / MANIFEST_FILE))
    assert manifest.model_trained is False  # made by make_checkpoint
    assert manifest.predictions_shape == (80, len(MODEL_GENES))
    assert manifest.stack_config["n_cells"] == SIZES["n_cells"]
    assert manifest.device == "cpu" and manifest.peak_memory_mb > 0
    for name, sha in manifest.outputs.items():
        assert hashlib.sha256((prefix / name).read_bytes()).hexdigest() == sha
    assert set(manifest.outputs) == {PREDICTIONS_FILE, SUMMARY_FILE, DE_FILE, GENE_MEANS_FILE}
    summary = PredictionSummary.model_validate(read_json(prefix / SUMMARY_FILE))
    assert summary.model_trained is False and summary.genes == len(MODEL_GENES)
    assert [s.split_value for s in summary.splits] == ["d1", "d2"]
    assert all(s.cells == 40 and s.mean_shift > 0 for s in summary.splits)
    absent = {f"G{i}" for i in range(60, 70)}  # model genes the query lacks are never ranked
    assert not absent & {g.gene for s in summary.splits for g in s.top_up + s.top_down}
    assert all(s.reference == "query_input" and s.genes_tested == 50 for s in summary.splits)
    progress = JobProgress.model_validate(read_json(prefix / PROGRESS_FILE))
    assert progress.phase == "done" and progress.chunks_done == progress.chunks_total > 0
    assert progress.cells_done == progress.cells_total == 40 * 2 * 3
    assert phases[0] == "loading" and phases[-1] == "done" and len(phases) >= 2


def test_inference_gene_means_equal_those_of_the_written_files(generate_run, tiny: TinyInputs) -> None:
    """gene_means.parquet holds what the report's plot computes from the full h5ads, to the bit."""
    from tasks.prediction_plot import mean_log1p_cpm, query_means_on_genes, what_the_job_read

    prefix, _ = generate_run
    means = pd.read_parquet(prefix / GENE_MEANS_FILE)
    pred = ad.read_h5ad(prefix / PREDICTIONS_FILE)
    assert list(means.columns) == GENE_MEANS_COLUMNS
    query_rows = means[means["source"] == "query_input"]
    assert query_rows["split_value"].isna().all() and list(query_rows["gene"]) == MODEL_GENES
    expected = query_means_on_genes(ad.read_h5ad(tiny.query), MODEL_GENES, *what_the_job_read(pred))
    assert np.array_equal(query_rows["mean_log1p_cpm"].to_numpy(), expected)
    for value in ("d1", "d2"):
        rows = means[(means["source"] == "prediction") & (means["split_value"] == value)]
        assert list(rows["gene"]) == MODEL_GENES
        arm = pred[(pred.obs["split_value"] == value).to_numpy()].X
        assert np.array_equal(rows["mean_log1p_cpm"].to_numpy(), mean_log1p_cpm(arm))
    assert len(means) == 3 * len(MODEL_GENES)


def test_inference_fp32_equals_stock_generate_and_is_deterministic(generate_run, tiny: TinyInputs, tmp_path: Path) -> None:
    """Same inputs and seed: the job's predictions equal arc-stack's own generate(), and a rerun's."""
    from stack.cli.generation import generate

    from inference.stack_job import run_job

    prefix, _ = generate_run
    pred = ad.read_h5ad(prefix / PREDICTIONS_FILE)
    stock = generate(
        str(tiny.generate_ckpt), str(tiny.prompt), str(tiny.query), str(tiny.genes),
        split_column="donor", mode="mdm", num_steps=3, batch_size=2, num_workers=0, random_seed=7,
    )
    for value in ("d1", "d2"):
        ours = pred[(pred.obs["split_value"] == value).to_numpy()]
        assert np.array_equal(ours.X.toarray(), stock[value].X.toarray())
        assert np.array_equal(ours.obs["gen_logit"].to_numpy(), stock[value].obs["gen_logit"].to_numpy())
    again = tmp_path / "again"
    run_job(tiny.spec(again))
    assert np.array_equal(ad.read_h5ad(again / PREDICTIONS_FILE).X.toarray(), pred.X.toarray())


def test_inference_embed_end_to_end_with_obs_filter(tiny: TinyInputs, tmp_path: Path) -> None:
    spec = tiny.spec(
        tmp_path / "emb", mode="embed", checkpoint_uri=str(tiny.embed_ckpt), prompt_uri=None, split_column=None,
        query_obs_filter={"cell_type": ["T"]},
    )
    proc = run_job_process(spec)
    assert proc.returncode == 0, proc.stderr
    pred = ad.read_h5ad(tmp_path / "emb" / PREDICTIONS_FILE)
    query = ad.read_h5ad(tiny.query)
    t_cells = query.obs_names[query.obs["cell_type"] == "T"]
    assert list(pred.obs_names) == list(t_cells)
    assert pred.shape == (len(t_cells), SIZES["n_hidden"] * SIZES["token_dim"])
    assert np.array_equal(pred.obsm["X_stack"], pred.X) and np.isfinite(pred.X).all()
    manifest = JobManifest.model_validate(read_json(tmp_path / "emb" / MANIFEST_FILE))
    assert manifest.model_trained is False and manifest.spec.mode == "embed"


def test_inference_wrong_checkpoint_class_is_refused_before_compute(tiny: TinyInputs, tmp_path: Path) -> None:
    proc = run_job_process(tiny.spec(tmp_path / "out", checkpoint_uri=str(tiny.embed_ckpt)))
    assert proc.returncode == 2
    assert "ICL_FinetunedModel" in proc.stderr and "StateICLModel" in proc.stderr
    assert not (tmp_path / "out" / PREDICTIONS_FILE).exists()
    assert not (tmp_path / "out" / MANIFEST_FILE).exists()
    assert JobProgress.model_validate(read_json(tmp_path / "out" / PROGRESS_FILE)).phase == "failed"


def test_inference_existing_output_prefix_is_never_touched(tiny: TinyInputs, tmp_path: Path) -> None:
    used = tmp_path / "used"
    used.mkdir()
    (used / "earlier.txt").write_text("keep me")
    proc = run_job_process(tiny.spec(used))
    assert proc.returncode == 2 and "already holds" in proc.stderr
    assert sorted(p.name for p in used.iterdir()) == ["earlier.txt"]
    assert (used / "earlier.txt").read_text() == "keep me"


def test_inference_job_never_imports_prefect() -> None:
    code = (
        "import sys, inference.stack_job, inference.generation, inference.embedding, inference.make_checkpoint;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'prefect'); print(bad); sys.exit(bool(bad))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
