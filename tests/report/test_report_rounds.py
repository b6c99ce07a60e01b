"""The closed loop in the report: a row per round (an unassessed score never a number), the best round
named as the run's result and labelling what follows, why the loop ended in words, the score
trajectory written beside the report and embedded, and the ``iterations`` artifact the run page and
``GET /runs/{id}`` read after every round."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from uuid import UUID, uuid4

import numpy as np
import pytest
from prefect import flow, get_client
from prefect.client.schemas.objects import Artifact, FlowRun, State, StateType
from prefect.context import FlowRunContext

from api.runs import loop_view
from api.runs import run_artifacts as artifacts_of_run
from clients.settings import Settings
from clients.storage import join_uri, local_path_of
from tasks.grounding.plots import trajectory_series
from tasks.loop.models import STOP_WORDS
from tasks.report import (
    AnalysisReport,
    RoundRow,
    publish_iterations,
    publish_report,
    report_sections,
    round_rows,
)
from tests.loop.records import record, run_plan
from tests.report import grounded
from tests.report.markup import assert_inert, parse_html, rendered
from tests.report.run_page import run_artifacts
from tests.report.test_report_publish import hostile_inputs

HOSTILE_CONTEXT = "<img src=x onerror=alert(7)> | # Forged round"
PLATEAU_DETAIL = "best 6 after round 3, 4 before; needed +1"


def three_rounds() -> list[RoundRow]:
    """Round 2 could not be scored; round 3 reuses round 1's job under a hostile context and a control."""
    rounds = [
        record(1, 4),
        record(2, None, components={"pathway_coherence": None, "target_activation": 6.0}),
        record(3, 6, plan=run_plan([HOSTILE_CONTEXT], control_value="PBS")),
    ]
    rounds[2] = rounds[2].model_copy(update={"job_id": "job-1", "reused_job_of": 1, "gpu_seconds": 0.0})
    return round_rows(rounds, {1: "go on", 2: "go on", 3: "stop: the best score stopped improving"})


def looped(rows: list[RoundRow] | None = None, best: int = 3, **fields: object) -> AnalysisReport:
    update = {"rounds": three_rounds() if rows is None else rows, "best_round": best, "stop_reason": "plateau",
              "stop_detail": PLATEAU_DETAIL, **fields}  # fmt: skip
    return grounded.report().model_copy(update=update)


def section(report: AnalysisReport, name: str) -> str:
    return dict(report_sections(report))[name]


def rounds_table(markdown: str) -> list[dict[str, str]]:
    """The Rounds table as a reader sees it: header -> cell text, a row per round."""
    page = rendered(markdown)[1]  # CommonMark with GFM tables, as the Prefect UI renders
    cells = [" ".join(e.text.split()) for e in page.elements if e.tag in ("th", "td")]
    header = cells[: cells.index("decision") + 1]
    body = cells[len(header) :]
    return [dict(zip(header, body[i : i + len(header)])) for i in range(0, len(body), len(header))]


def test_a_three_round_report_has_a_row_per_round_after_the_score_card() -> None:
    report = looped()
    names = [name for name, _ in report_sections(report)]
    assert names.index("rounds") == names.index("score_card") + 1

    rows = rounds_table(section(report, "rounds"))
    assert [r["round"] for r in rows] == ["1", "2", "3 (best)"]
    assert [r["composite"] for r in rows] == ["4 / 10", "not assessed", "6 / 10"]
    assert rows[1]["pathway coherence"] == "not assessed" and rows[1]["target activation"] == "6.0"
    assert rows[2]["job id"] == "job-1 (reused from round 1)" and rows[2]["GPU-seconds"] == "0.0"
    assert rows[2]["control"] == "PBS" and rows[0]["control"] == "none"
    assert rows[0]["planned by"].startswith("offline planner") and rows[0]["steps"] == "10"
    assert rows[2]["decision"] == "stop: the best score stopped improving"


def test_the_best_round_is_named_and_labels_what_the_report_shows() -> None:
    report = looped(best=3)
    text = " ".join(rendered(section(report, "rounds"))[1].text.split())
    assert "best round: 3 of 3; the run's result is its best round, not its last" in text
    shown = headings(report)
    for heading in ("Score card", "Differential expression", "Enrichment", "Plan", "GPU job"):
        assert f"{heading} (round 3)" in shown, shown


def test_the_loop_end_is_given_in_words_with_its_detail() -> None:
    text = " ".join(rendered(section(looped(), "rounds"))[1].text.split())
    assert f"the loop ended: {STOP_WORDS['plateau']} ({PLATEAU_DETAIL})" in text


def headings(report: AnalysisReport) -> list[str]:
    return rendered("\n\n".join(markdown for _, markdown in report_sections(report)))[1].headings()


def test_a_report_without_rounds_renders_as_before_and_one_round_says_only_why_it_ended() -> None:
    before = grounded.report()
    assert "rounds" not in dict(report_sections(before))
    assert not [h for h in headings(before) if "round" in h.casefold()]

    one = looped(rows=three_rounds()[:1], best=1, stop_reason="threshold_met", stop_detail="7 >= 7")
    text = " ".join(rendered(section(one, "rounds"))[1].text.split())
    assert text == f"Rounds One round ran; the loop ended: {STOP_WORDS['threshold_met']} (7 >= 7)."
    assert not [h for h in headings(one) if "(round" in h]  # one round: nothing to tell apart
    assert "score_trajectory" not in dict(report_sections(one))


def test_hostile_contexts_and_details_stay_text_in_the_rounds_section() -> None:
    report = looped(stop_detail="<script>alert(8)</script>\n# Model: TRAINED")
    for page in rendered(section(report, "rounds")):
        assert_inert(page)
        assert page.headings() == ["Rounds"]
        assert f"condition: {HOSTILE_CONTEXT}" in " ".join(page.text.split())
        assert "<script>alert(8)</script> # Model: TRAINED" in " ".join(page.text.split())


def test_an_unassessed_score_is_a_gap_in_the_trajectory_never_a_zero() -> None:
    series = trajectory_series(three_rounds())
    assert list(series) == ["pathway_coherence", "target_activation", "composite"]
    assert np.isnan(series["composite"][1]) and series["composite"][[0, 2]].tolist() == [4.0, 6.0]
    assert np.isnan(series["pathway_coherence"][1]) and series["target_activation"].tolist() == [4.0, 6.0, 6.0]


@pytest.fixture
def published(prefect_api: None, settings: Settings, tmp_path: Path) -> tuple[AnalysisReport, dict, str]:
    predictions_uri, gene_means_uri = hostile_inputs(tmp_path)

    @flow(name="publish-looped-report-test")
    def run() -> tuple[AnalysisReport, str]:
        run_id = str(FlowRunContext.get().flow_run.id)
        rows = three_rounds()
        publish_iterations(rows[:2])  # after round 2, as the flow does after every round
        publish_iterations(rows)
        prefix = join_uri(settings.storage_root, "runs", run_id, "report")
        report = looped().model_copy(update={"outputs": {"predictions": predictions_uri}})
        return publish_report(report, prefix, gene_means_uri=gene_means_uri), run_id

    report, run_id = run()
    return report, run_artifacts(run_id), run_id


def api_artifacts(run_id: str) -> list[Artifact]:
    """The run's artifacts as ``GET /runs/{id}`` reads them (flow-level ones too: the iterations table is one)."""

    async def read() -> list[Artifact]:
        async with get_client() as client:
            return await artifacts_of_run(client, UUID(run_id))

    return asyncio.run(read())


def test_the_trajectory_is_written_beside_the_report_and_embedded(published: tuple[AnalysisReport, dict, str]) -> None:
    report, _, _ = published
    uri = report.outputs["score_trajectory"]
    assert uri == join_uri(report.outputs["report_markdown"].rsplit("/", 1)[0], "score_trajectory.png")
    assert local_path_of(uri).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    page = parse_html(local_path_of(report.outputs["report_html"]).read_text())
    images = {i.attrs["alt"]: i.attrs["src"] or "" for i in page.elements if i.tag == "img"}
    assert images["scores across rounds"].startswith("data:image/png;base64,")
    assert not page.tags() & {"script", "iframe", "object", "embed", "svg", "form"} and page.event_handlers() == []

    saved = json.loads(local_path_of(report.outputs["report_json"]).read_text())
    assert [r["composite"] for r in saved["rounds"]] == [4, None, 6]
    assert (saved["best_round"], saved["stop_reason"]) == (3, "plateau")


def test_the_iterations_artifact_is_escaped_and_read_back_by_the_api(published: tuple[AnalysisReport, dict, str]) -> None:
    _, _, run_id = published
    artifacts = api_artifacts(run_id)
    tables = [a for a in artifacts if a.key == "iterations"]
    assert len(tables) == 2  # one per round published
    table = max(tables, key=lambda a: a.created)
    rows = json.loads(table.data)
    assert [r["round"] for r in rows] == [1, 2, 3]  # the latest version: every round so far
    assert [r["composite"] for r in rows] == [4, "not assessed", 6]
    assert rows[1]["pathway coherence"] == "not assessed"
    for row in rows:
        for cell in row.values():
            for page in rendered(str(cell)):  # the Prefect UI renders table cells as markdown
                assert page.tags() <= {"p"} and page.hrefs() == []
    assert " ".join(rendered(rows[2]["contexts"])[1].text.split()) == f"condition: {HOSTILE_CONTEXT}"

    done = FlowRun(id=UUID(run_id), name="analysis", flow_id=uuid4(), state=State(type=StateType.COMPLETED))
    view = loop_view(done, artifacts)
    assert view is not None and (view.rounds_done, view.best_round, view.best_score, view.current_round) == (3, 3, 6, None)
