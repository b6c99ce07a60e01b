"""The control_value: checked against the prompt data before any GPU time, and chosen offline only
when a value of the split column plainly is a baseline."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from clients.llm.claude import ClaudeClient
from clients.llm.settings import AgentSettings
from tasks.agent.claude import plan_with_claude
from tasks.agent.control_choice import baseline_strength, choose_control
from tasks.agent.offline_planner import offline_plan
from tasks.agent.plan import PlanProposal
from tasks.agent.plan_checks import PlanInvalid, apply_request, check_plan, check_request
from tasks.agent.plan_data import PlanData
from tasks.request import AnalysisRequest
from tests.agent.conftest import FAKE_KEY
from tests.fake_anthropic_api import FakeMessagesAPI, tool_use

SETTINGS = AgentSettings()  # at least 10 prompt cells per context


def _h5ad(path: Path, column: str, cells: dict[str, int]) -> Path:
    labels = [value for value, n in cells.items() for _ in range(n)]
    obs = pd.DataFrame(
        {column: pd.Categorical(labels), "cell_type": pd.Categorical(["T cell"] * len(labels))},
        index=[f"c{i}" for i in range(len(labels))],
    )
    ad.AnnData(X=np.ones((len(labels), 4), dtype=np.float32), obs=obs).write_h5ad(path)
    return path


@pytest.fixture
def conditions(tmp_path: Path) -> Path:
    return _h5ad(tmp_path / "conditions.h5ad", "condition", {"IFNG": 30, "TNF": 25, "PBS": 20, "IL4": 4})


def _request(path: Path, question: str = "How do T cells respond to IFNG and TNF?", **fields: object) -> AnalysisRequest:
    return AnalysisRequest(question=question, prompt_uri=str(path), query_uri=str(path), **fields)


def _data(path: Path) -> PlanData:
    return PlanData.from_uris(str(path), str(path))


def _proposal(**fields: object) -> PlanProposal:
    base = {"split_column": "condition", "split_values": ["IFNG"], "num_steps": 10, "rationale": "test"}
    return PlanProposal(**{**base, **fields})


def test_an_absent_control_value_is_refused_naming_the_values(conditions: Path) -> None:
    request = _request(conditions, split_column="condition", control_value="vehicle")

    with pytest.raises(PlanInvalid) as failure:
        check_request(request, _data(conditions), SETTINGS)

    message = str(failure.value)
    assert "control_value 'vehicle' is not a value of prompt column 'condition'" in message
    assert all(repr(v) in message for v in ("IFNG", "TNF", "PBS", "IL4"))
    # The same check guards every planner's plan.
    problems = check_plan(_proposal(control_value="vehicle"), _data(conditions), SETTINGS)
    assert any("control_value 'vehicle' is not a value" in p for p in problems)


def test_a_control_with_too_few_prompt_cells_is_refused(conditions: Path) -> None:
    problems = check_plan(_proposal(control_value="IL4"), _data(conditions), SETTINGS)
    assert problems == [
        "control_value 'IL4' has 4 prompt cells; at least 10 needed (values with enough: 'IFNG', 'TNF', 'PBS')"
    ]
    # Counted after the prompt filter: a filter that leaves the control out is named too.
    filtered = _proposal(control_value="PBS", prompt_obs_filter={"condition": ["IFNG"]})
    assert any(
        "control_value 'PBS' has 0 prompt cells after prompt_obs_filter" in p
        for p in check_plan(filtered, _data(conditions), SETTINGS)
    )


def test_a_control_without_split_column_is_refused(conditions: Path) -> None:
    with pytest.raises(PlanInvalid, match="control_value is given without split_column"):
        check_request(_request(conditions, control_value="PBS"), _data(conditions), SETTINGS)


def test_a_control_also_listed_as_a_context_is_removed_from_the_contexts(conditions: Path) -> None:
    request = _request(conditions, split_column="condition", split_values=["PBS", "IFNG"], control_value="PBS")
    check_request(request, _data(conditions), SETTINGS)  # fine: the control is generated once, as the reference

    plan = apply_request(_proposal(split_values=["TNF"]), request)

    assert plan.split_values == ["IFNG"] and plan.control_value == "PBS"
    assert check_plan(plan, _data(conditions), SETTINGS) == []
    assert offline_plan(request, _data(conditions), SETTINGS).split_values == ["IFNG"]


def test_a_plan_whose_only_context_is_the_control_is_invalid(conditions: Path) -> None:
    request = _request(conditions, split_column="condition", split_values=["PBS"], control_value="PBS")
    with pytest.raises(PlanInvalid, match="the only context is the control 'PBS'"):
        check_request(request, _data(conditions), SETTINGS)
    problems = check_plan(apply_request(_proposal(split_values=["PBS"], control_value="PBS"), _request(conditions)),
                          _data(conditions), SETTINGS)
    assert any("the only context is the control 'PBS'" in p for p in problems)


def test_the_offline_planner_picks_pbs_as_the_control(conditions: Path) -> None:
    plan = offline_plan(_request(conditions), _data(conditions), SETTINGS)

    assert plan.split_column == "condition" and plan.control_value == "PBS"
    assert plan.split_values == ["IFNG", "TNF"]  # the treated contexts the question names; PBS is not one
    assert "control: 'PBS'" in plan.rationale and "not one of the treated contexts" in plan.rationale
    assert check_plan(plan, _data(conditions), SETTINGS) == []
    spec = plan.to_job_spec(
        prompt_uri="file:///p.h5ad", query_uri="file:///p.h5ad", checkpoint_uri="file:///ckpt",
        gene_list_uri="file:///genes.pkl", output_prefix="file:///out/1",
    )
    assert spec.control_value == "PBS" and spec.contexts(["IFNG", "TNF"]) == ["IFNG", "TNF", "PBS"]


def test_the_offline_planner_picks_a_vehicle_even_when_the_question_names_it(tmp_path: Path) -> None:
    path = _h5ad(tmp_path / "drugs.h5ad", "treatment", {"vehicle (DMSO)": 40, "dexamethasone": 30, "rapamycin": 20})

    plan = offline_plan(_request(path, question="What does dexamethasone do compared with vehicle?"), _data(path), SETTINGS)

    assert plan.control_value == "vehicle (DMSO)" and plan.split_values == ["dexamethasone"]


def test_the_offline_planner_takes_no_control_when_no_value_is_a_baseline(tmp_path: Path) -> None:
    path = _h5ad(tmp_path / "stims.h5ad", "condition", {"IFNG": 30, "IFNG + DMSO": 25, "LPS": 20})

    plan = offline_plan(_request(path, question="What do the stimulations change?"), _data(path), SETTINGS)

    assert plan.control_value is None and plan.split_values == ["IFNG", "IFNG + DMSO", "LPS"]
    assert "no control" in plan.rationale and "query input is the reference" in plan.rationale


def test_the_request_control_wins_and_the_planner_keeps_a_lone_requested_context(conditions: Path) -> None:
    asked = offline_plan(_request(conditions, split_column="condition", control_value="TNF"), _data(conditions), SETTINGS)
    assert asked.control_value == "TNF" and "TNF" not in asked.split_values and "as the request asks" in asked.rationale
    lone = offline_plan(_request(conditions, split_column="condition", split_values=["PBS"]), _data(conditions), SETTINGS)
    assert lone.split_values == ["PBS"] and lone.control_value is None  # never a plan of the control alone


@pytest.mark.parametrize(
    ("column", "value", "strength"),
    [
        ("condition", "PBS", 2),
        ("condition", "Vehicle", 2),
        ("condition", "DMSO 0.1%", 2),
        ("condition", "untreated_24h", 2),
        ("stim", "unstim", 2),
        ("guide", "non-targeting sgRNA", 2),
        ("guide", "NT", 1),
        ("condition", "ctrl", 2),
        ("condition", "IFNG + DMSO", 0),  # a treatment in its vehicle
        ("condition", "stimulated", 0),
        ("bulk_labels", "CD4+/CD45RA+/CD25- Naive T", 0),  # a cell type, not a baseline
        ("bulk_labels", "naive", 0),  # a weak word outside a condition column
        ("louvain", "nt", 0),
    ],
)
def test_which_values_read_as_a_baseline(column: str, value: str, strength: int) -> None:
    assert baseline_strength(column, value) == strength


def test_the_choice_is_deterministic_strongest_then_largest() -> None:
    counts = {"ctrl": 20, "PBS": 50, "NT": 80, "IFNG": 90}
    assert choose_control("condition", counts, 10)[0] == "PBS"  # NT is weak; PBS has more cells than ctrl
    assert choose_control("condition", {"PBS": 5, "IFNG": 90}, 10) is None  # too few cells to be the reference


def test_claude_is_told_about_the_control_and_its_control_is_not_a_context(
    claude_settings: AgentSettings, fake_api: FakeMessagesAPI, conditions: Path
) -> None:
    proposal = {"split_column": "condition", "split_values": ["PBS", "IFNG", "TNF"], "control_value": "PBS",
                "num_steps": 10, "rationale": "PBS is the vehicle."}
    fake_api.reply([tool_use("submit_plan", proposal)])

    with ClaudeClient(claude_settings, api_key=FAKE_KEY) as client:
        plan = plan_with_claude(client, _request(conditions), _data(conditions))

    assert plan.control_value == "PBS" and plan.split_values == ["IFNG", "TNF"]
    sent = fake_api.requests[0].body
    assert "control_value" in sent["system"][0]["text"] and "synthetic control" in sent["system"][0]["text"]
    submit = next(t for t in sent["tools"] if t["name"] == "submit_plan")
    assert "control_value" in submit["input_schema"]["properties"]


def test_claude_naming_an_absent_control_gets_the_values_in_its_repair_turn(
    claude_settings: AgentSettings, fake_api: FakeMessagesAPI, conditions: Path
) -> None:
    wrong = {"split_column": "condition", "split_values": ["IFNG"], "control_value": "DMSO", "num_steps": 10,
             "rationale": "DMSO is the vehicle."}
    fake_api.reply([tool_use("submit_plan", wrong)])
    fake_api.reply([tool_use("submit_plan", {**wrong, "control_value": "PBS"})])

    with ClaudeClient(claude_settings, api_key=FAKE_KEY) as client:
        plan = plan_with_claude(client, _request(conditions), _data(conditions))

    repair = fake_api.requests[1].tool_results()[0]["content"]
    assert "control_value 'DMSO' is not a value of prompt column 'condition'" in repair and "'PBS'" in repair
    assert plan.control_value == "PBS"
