"""Grounding in a whole analysis run: a synthetic control generated in the same (one) Batch job, the
DE and backtest it computes, the scores and the report; and the requests that must fail before any
GPU time (a control the prompt lacks, a gene set the pack lacks, a malformed GMT)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from clients.settings import Settings, get_settings
from clients.storage import local_path_of
from flows.analysis_run import analysis_run
from tasks.agent.plan_checks import PlanInvalid
from tasks.grounding.pack import GmtError, load_pack
from tasks.request import AnalysisRequest
from tests.fake_batch_api import FakeBatchApi
from tests.perturbation_inputs import CONTROL, TREATED, PerturbationInputs, make_perturbation_inputs

REPO = Path(__file__).resolve().parents[2]
PLANTED_SET = "GO:0002443"  # leukocyte mediated immunity: about 60 of pbmc68k's 765 genes


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> PerturbationInputs:
    pack = load_pack(get_settings().grounding.pack_uri)
    planted = sorted(pack.gene_set(PLANTED_SET).genes)
    return make_perturbation_inputs(tmp_path_factory.mktemp("perturbation"), planted)


@pytest.fixture
def fake_batch() -> FakeBatchApi:
    with FakeBatchApi() as fake:
        yield fake


@pytest.fixture
def settings(settings: Settings, inputs: PerturbationInputs, fake_batch: FakeBatchApi, monkeypatch) -> Settings:
    """The cloud Batch backend against the fake API, whose 'image' runs the real job from this checkout."""
    readable = [settings.data_dir.as_uri(), inputs.h5ad.parent.parent.as_uri()]
    monkeypatch.setenv("STACKFLOWS_API__ALLOWED_URI_PREFIXES", json.dumps(readable))
    batch = {
        "BACKEND": "cloud", "PROJECT": "test-project", "REGION": "us-central1", "IMAGE": "stack-job:test",
        "API_ENDPOINT": fake_batch.endpoint, "ANONYMOUS_CREDENTIALS": "true", "POLL_INITIAL_S": "0.2",
        "POLL_MAX_S": "0.5",
    }  # fmt: skip
    for key, value in batch.items():
        monkeypatch.setenv(f"STACKFLOWS_BATCH__{key}", value)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    get_settings.cache_clear()
    return get_settings()


def run(request: AnalysisRequest, settings: Settings):
    return analysis_run.with_options(result_storage=settings.data_dir / "prefect-results")(request)


def request_for(inputs: PerturbationInputs, **overrides: object) -> AnalysisRequest:
    body = inputs.request_body("How do monocytes respond to LPS?", **overrides)
    return AnalysisRequest.model_validate(body)


def test_a_synthetic_control_is_generated_in_the_same_job_and_the_run_is_scored_against_it(
    prefect_api: None, settings: Settings, inputs: PerturbationInputs, fake_batch: FakeBatchApi
) -> None:
    report = run(request_for(inputs, expected_gene_sets={PLANTED_SET: "up"}), settings)

    assert fake_batch.create_requests == 1  # treated and control arms: one GPU job
    predictions = __import__("anndata").read_h5ad(local_path_of(report.outputs["predictions"]))
    arms = predictions.obs.groupby("split_value", observed=True)["query_cell"].apply(set)
    assert set(arms.index) == {TREATED, CONTROL} and arms[TREATED] == arms[CONTROL]  # the pairs are whole

    de = pd.read_parquet(local_path_of(report.outputs["de"]))
    assert set(de["split_value"]) == {TREATED}  # the control is the reference, not a context
    assert de["test"].str.contains("paired").all() and (de["reference"] == "synthetic_control").all()

    grounding = report.grounding
    assert grounding is not None and "synthetic control" in grounding.reference
    backtest = grounding.component("backtest")
    assert backtest is not None and backtest.score is not None, backtest  # real LPS monocytes were held out
    assert grounding.component("document_support").score is None  # no documents, no claims: not assessed
    assessed = [c for c in grounding.components if c.score is not None]
    assert (grounding.composite is None) == (len(assessed) < 2)
    assert report.expectations is not None and report.expectations.cell_type is not None
    assert report.expectations.cell_type.ontology_id == "CL:0001054"  # CD14-positive monocyte

    markdown = local_path_of(report.outputs["report_markdown"]).read_text()
    assert markdown.startswith("# Untrained model")
    assert "Score card" in markdown and "not assessed" in markdown


def test_a_control_value_the_prompt_lacks_is_refused_before_any_gpu_job(
    prefect_api: None, settings: Settings, inputs: PerturbationInputs, fake_batch: FakeBatchApi
) -> None:
    with pytest.raises((PlanInvalid, ValueError)) as raised:
        run(request_for(inputs, control_value="DMSO"), settings)

    assert "DMSO" in str(raised.value) and "PBS" in str(raised.value)  # it names the values that exist
    assert fake_batch.create_requests == 0


def test_an_expected_gene_set_the_pack_lacks_is_refused_before_any_gpu_job(
    prefect_api: None, settings: Settings, inputs: PerturbationInputs, fake_batch: FakeBatchApi
) -> None:
    with pytest.raises(ValueError, match="no such pathway"):
        run(request_for(inputs, expected_gene_sets={"no such pathway": "up"}), settings)
    assert fake_batch.create_requests == 0


def test_a_malformed_gmt_is_refused_before_any_gpu_job_naming_its_line(
    prefect_api: None, settings: Settings, inputs: PerturbationInputs, fake_batch: FakeBatchApi
) -> None:
    gmt = inputs.h5ad.parent / "hallmark.gmt"
    gmt.write_text("HALLMARK_OK\tdesc\tIL6\tTNF\nHALLMARK_BROKEN_NO_GENES\n")

    with pytest.raises(GmtError, match="line 2"):
        run(request_for(inputs, gene_set_uris=[gmt.as_uri()]), settings)
    assert fake_batch.create_requests == 0
