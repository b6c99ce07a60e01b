"""The closed loop in a whole analysis run (offline refiner, tiny untrained model): every round is its
own subflow with its own job and outputs, the iterations table grows, and the run's result is its
best round."""

from __future__ import annotations

import json

import pytest

from clients.settings import Settings, get_settings
from clients.storage import local_path_of
from flows.analysis_run import analysis_run
from tasks.request import AnalysisRequest
from tests.small_inputs import Inputs, make_inputs


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    return make_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.fixture
def settings(settings: Settings, inputs: Inputs, monkeypatch: pytest.MonkeyPatch) -> Settings:
    readable = [settings.data_dir.as_uri(), inputs.h5ad.parent.parent.as_uri()]
    monkeypatch.setenv("STACKFLOWS_API__ALLOWED_URI_PREFIXES", json.dumps(readable))
    get_settings.cache_clear()
    return get_settings()


def test_two_rounds_run_two_jobs_and_the_report_shows_both_and_keeps_the_best(
    prefect_api: None, settings: Settings, inputs: Inputs
) -> None:
    body = inputs.request_body("How do monocytes look among B and NK cells, and does their antigen presentation change?", split_values=["CD19+ B", "CD56+ NK"])
    request = AnalysisRequest.model_validate({**body, "num_steps": None, "max_iterations": 2})

    report = analysis_run.with_options(result_storage=settings.data_dir / "prefect-results")(request)

    jobs = sorted(p.name for p in (settings.data_dir / "jobs").iterdir() if p.is_dir())
    assert len(jobs) == 2, jobs  # two distinct plans, two GPU jobs
    assert [r.k for r in report.rounds] == [1, 2]
    first, second = report.rounds
    assert first.steps != second.steps  # the offline refiner's round 2: more steps
    assert report.stop_reason == "max_iterations"
    composites = {r.k: r.composite for r in report.rounds}
    assert report.best_round == max(composites, key=lambda k: (composites[k] is not None, composites[k] or 0, -k))
    run_dir = local_path_of(report.outputs["report_markdown"]).parent.parent
    for k in (1, 2):
        assert (run_dir / f"iter-{k}" / "stack" / "predictions.h5ad").is_file(), f"round {k}'s outputs are gone"
    markdown = local_path_of(report.outputs["report_markdown"]).read_text()
    assert "## Rounds" in markdown and f"best round: {report.best_round} of 2" in markdown
    assert local_path_of(report.outputs["score_trajectory"]).read_bytes().startswith(b"\x89PNG")
