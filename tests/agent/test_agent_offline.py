"""Planning and summarising without a model: the offline planner on scanpy's pbmc68k_reduced."""

from __future__ import annotations

import re
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from clients.llm.settings import AgentSettings
from tasks.request import AnalysisRequest
from inference.contract import PredictionSummary, SplitSummary
from tasks.agent.offline_findings import offline_findings
from tasks.agent.offline_planner import OFFLINE_PLANNER, offline_plan
from tasks.agent.plan_checks import PlanInvalid, check_plan, check_request
from tasks.agent.plan_data import PlanData
from tests.agent.conftest import change

QUESTION = "How would dendritic cells look in the context of monocytes and B cells?"


def _request(path: Path, question: str = QUESTION, **fields: object) -> AnalysisRequest:
    return AnalysisRequest(question=question, prompt_uri=str(path), query_uri=str(path), **fields)


def test_offline_plan_for_pbmc68k_reduced_is_valid(pbmc_h5ad: Path) -> None:
    data = PlanData.from_uris(pbmc_h5ad.as_uri(), pbmc_h5ad.as_uri())
    settings = AgentSettings()

    plan = offline_plan(_request(pbmc_h5ad), data, settings)

    assert check_plan(plan, data, settings) == []
    assert plan.planned_by == OFFLINE_PLANNER
    assert plan.split_column == "bulk_labels"  # the question names its values
    assert plan.split_values == ["Dendritic", "CD14+ Monocyte"]  # the values the question names
    assert plan.num_steps == settings.default_num_steps and plan.usage is None
    assert "without a model" in plan.rationale
    spec = plan.to_job_spec(
        prompt_uri="file:///in.h5ad", query_uri="file:///in.h5ad", checkpoint_uri="file:///ckpt",
        gene_list_uri="file:///genes.pkl", output_prefix="file:///out/1", chunk_size=64,
    )
    assert spec.mode == "generate" and spec.split_values == plan.split_values and spec.chunk_size == 64


def test_offline_contexts_leave_out_the_query_cells_own_type(pbmc_h5ad: Path) -> None:
    data = PlanData.from_uris(pbmc_h5ad.as_uri(), pbmc_h5ad.as_uri())
    request = _request(pbmc_h5ad, query_obs_filter={"bulk_labels": ["Dendritic"]})

    plan = offline_plan(request, data, AgentSettings())

    assert plan.split_values == ["CD14+ Monocyte"]


def test_offline_plan_without_named_values_takes_the_best_populated(pbmc_h5ad: Path) -> None:
    data = PlanData.from_uris(pbmc_h5ad.as_uri(), pbmc_h5ad.as_uri())
    settings = AgentSettings()

    request = _request(pbmc_h5ad, question="What changes between contexts?", split_column="bulk_labels")

    plan = offline_plan(request, data, settings)

    assert len(plan.split_values) == settings.max_split_values
    assert "CD4+/CD45RA+/CD25- Naive T" not in plan.split_values  # 8 cells: too few


def test_offline_plan_uses_the_request_fields(pbmc_h5ad: Path) -> None:
    data = PlanData.from_uris(str(pbmc_h5ad), str(pbmc_h5ad))
    request = _request(
        pbmc_h5ad, question="What changes across clusters?", split_column="louvain",
        prompt_obs_filter={"phase": ["G1"]}, num_steps=40, seed=3,
    )

    plan = offline_plan(request, data, AgentSettings(max_split_values=4))

    assert plan.split_column == "louvain" and plan.prompt_obs_filter == {"phase": ["G1"]}
    assert (plan.num_steps, plan.seed) == (40, 3)
    g1_counts = data.prompt.value_counts("louvain", {"phase": ["G1"]})
    assert plan.split_values == list(g1_counts)[:4]  # largest first, counted after the prompt filter


def test_offline_planner_without_a_usable_column_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "flat.h5ad"
    ad.AnnData(
        X=np.ones((30, 5), dtype=np.float32),
        obs=pd.DataFrame({"score": np.linspace(0, 1, 30)}, index=[f"c{i}" for i in range(30)]),
    ).write_h5ad(path)
    data = PlanData.from_uris(str(path), str(path))

    with pytest.raises(PlanInvalid, match="(?s)no prompt obs column to split on.*set split_column and split_values"):
        offline_plan(_request(path), data, AgentSettings())


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"split_column": "cell_type"}, "split_column names column 'cell_type', which the prompt data does not have"),
        ({"split_values": ["Dendritic"]}, "split_values is given without split_column"),
        ({"query_obs_filter": {"bulk_labels": ["DC"]}}, "query_obs_filter['bulk_labels'] names 'DC', not values"),
        (
            {"split_column": "bulk_labels", "split_values": ["CD34+"], "prompt_obs_filter": {"phase": ["S"]}},
            "split value 'CD34+' has 7 prompt cells after prompt_obs_filter; at least 10 needed",
        ),
    ],
)
def test_bad_request_fields_are_named_before_planning(pbmc_h5ad: Path, fields: dict, expected: str) -> None:
    data = PlanData.from_uris(str(pbmc_h5ad), str(pbmc_h5ad))
    with pytest.raises(PlanInvalid) as failure:
        check_request(_request(pbmc_h5ad, **fields), data, AgentSettings())
    assert "fix the request" in str(failure.value) and expected in str(failure.value)


def _summary(trained: bool) -> PredictionSummary:
    return PredictionSummary(
        mode="generate", model_trained=trained, query_cells=240, genes=765,
        splits=[
            SplitSummary(split_value="CD19+ B", cells=240, mean_shift=0.12,
                         top_up=[change("CD79A", 1.1)], top_down=[change("LYZ", -0.8)]),
            SplitSummary(split_value="CD14+ Monocyte", cells=240, mean_shift=0.31, significant_up=42,
                         significant_down=7, top_up=[change("S100A8", 2.0, q=3e-6), change("LYZ", 1.6)],
                         top_down=[change("CD74", -0.5)]),
        ],
    )


def test_offline_findings_say_no_model_wrote_them_and_flag_an_untrained_checkpoint(pbmc_h5ad: Path) -> None:
    data = PlanData.from_uris(str(pbmc_h5ad), str(pbmc_h5ad))
    plan = offline_plan(_request(pbmc_h5ad), data, AgentSettings(max_split_values=2))

    findings = offline_findings(plan, _summary(trained=False))

    assert findings.written_by.startswith("offline summary") and not findings.model_trained
    assert "no language model read these results" in findings.markdown
    assert "**Untrained model.**" in findings.markdown
    assert any("untrained" in c for c in findings.caveats)
    assert "moves the query cells most is **CD14+ Monocyte**" in findings.markdown
    # Per context: the reference, the significant counts and the top genes with LFC and q.
    assert "| CD14+ Monocyte | query input (unpaired) | 240 | 42 | 7 | S100A8 (+2.00, q 3e-06)" in findings.markdown
    assert "No grounding score card for this run." in findings.markdown
    assert any("did not produce: Dendritic" in c for c in findings.caveats)  # planned, absent from the summary
    assert any("query-as-control" in c and "weaker" in c for c in findings.caveats)
    assert any("descriptive" in c and "shrink as more cells" in c for c in findings.caveats)
    trained = offline_findings(plan, _summary(trained=True))
    assert "Untrained" not in trained.markdown and trained.model_trained


def test_plan_invalid_survives_pickling() -> None:
    import pickle

    error = pickle.loads(pickle.dumps(PlanInvalid("Bad plan:", ["split_column names column 'x'"])))
    assert error.problems == ["split_column names column 'x'"] and str(error) == "Bad plan:\n- split_column names column 'x'"


def test_unreadable_inputs_are_named(tmp_path: Path) -> None:
    not_h5ad = tmp_path / "cells.h5ad"
    not_h5ad.write_text("barcode,cell_type\n")
    with pytest.raises(ValueError, match=r"cells\.h5ad: not a readable h5ad"):
        PlanData.from_uris(str(not_h5ad), str(not_h5ad))
    with pytest.raises(FileNotFoundError, match="missing.h5ad: no such h5ad file"):
        PlanData.from_uris(str(tmp_path / "missing.h5ad"), str(not_h5ad))


def _with_missing_labels(path: Path) -> Path:
    """A 'condition' column where most cells have no value (NaN), more than either real value."""
    labels = ["ctrl"] * 15 + ["stim"] * 12 + [None] * 20
    obs = pd.DataFrame({"condition": pd.Categorical(labels)}, index=[f"c{i}" for i in range(len(labels))])
    ad.AnnData(X=np.ones((len(labels), 5), dtype=np.float32), obs=obs).write_h5ad(path)
    return path


def test_a_missing_obs_value_is_never_a_context_or_a_filter_value(tmp_path: Path) -> None:
    path = _with_missing_labels(tmp_path / "nan.h5ad")
    data = PlanData.from_uris(str(path), str(path))
    settings = AgentSettings()

    plan = offline_plan(_request(path, question="What changes between conditions?"), data, settings)

    assert plan.split_column == "condition" and plan.split_values == ["stim"] and plan.control_value == "ctrl"
    assert data.prompt.value_counts("condition") == {"ctrl": 15, "stim": 12}
    assert data.prompt.describe_column("condition")["cells_without_a_value"] == 20
    for fields, expected in [
        ({"split_column": "condition", "split_values": ["nan"]}, "split value 'nan' is not a value"),
        ({"query_obs_filter": {"condition": ["nan"]}}, "query_obs_filter['condition'] names 'nan', not values"),
    ]:
        with pytest.raises(PlanInvalid, match=re.escape(expected)):
            check_request(_request(path, **fields), data, settings)


def test_the_job_spec_carries_the_matrix_validation_chose(pbmc_h5ad: Path) -> None:
    data = PlanData.from_uris(pbmc_h5ad.as_uri(), pbmc_h5ad.as_uri())
    plan = offline_plan(_request(pbmc_h5ad), data, AgentSettings())
    where = dict(
        prompt_uri="file:///in.h5ad", query_uri="file:///in.h5ad", checkpoint_uri="file:///ckpt",
        gene_list_uri="file:///genes.pkl", output_prefix="file:///out/1",
    )

    spec = plan.to_job_spec(
        **where, prompt_matrix="raw.X", query_matrix="layers/counts", counts_required=False,
        gene_name_column="feature_name",
    )

    assert (spec.prompt_matrix, spec.query_matrix) == ("raw.X", "layers/counts")
    assert not spec.counts_required and spec.gene_name_column == "feature_name"
    # what the job reads is part of what it computes: a different matrix is a different job
    hashes = {
        spec.content_hash(),
        plan.to_job_spec(**where, prompt_matrix="raw.X", query_matrix="X", counts_required=False,
                         gene_name_column="feature_name").content_hash(),
        plan.to_job_spec(**where, prompt_matrix="raw.X", query_matrix="layers/counts", counts_required=False).content_hash(),
        plan.to_job_spec(**where, prompt_matrix="raw.X", query_matrix="layers/counts",
                         gene_name_column="feature_name").content_hash(),
    }
    assert len(hashes) == 4
