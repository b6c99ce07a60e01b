"""The report's Rounds section: a row per round of the closed loop, the round the report shows, why
the loop ended, and the scores across rounds. The same rows feed the ``iterations`` table artifact."""

from __future__ import annotations

from collections.abc import Callable

from tasks.loop.table import Cell, component_column
from tasks.report.grounding_sections import (
    COMPONENTS,
    NOT_ASSESSED,
    Section,
    figure_section,
)
from tasks.report.model import AnalysisReport, RoundRow, stop_text
from tasks.report_text import md_inline, md_table

TRAJECTORY = "score_trajectory"  # the plot's name in the report's outputs
TRAJECTORY_ALT = "scores across rounds"


def _component_names(rows: list[RoundRow]) -> list[str]:
    """The components any round has (assessed or not), in the score card's order, then any others."""
    present = {name for row in rows for name in row.components}
    return [n for n in COMPONENTS if n in present] + sorted(present - set(COMPONENTS))


def _cells(row: RoundRow, names: list[str]) -> dict[str, Cell]:
    """A round's cells under the column headers of ``tasks.loop.table`` (plus the components any round has)."""
    contexts = ", ".join(row.contexts)
    count = f" ({row.query_cell_count} cells)" if row.query_cell_count is not None else ""
    cells: dict[str, Cell] = {
        "round": row.k,
        "planned by": row.planned_by,
        "contexts": f"{row.split_column}: {contexts}" if row.split_column else contexts,
        "control": row.control if row.control is not None else "none",
        "query cells": row.query_cells + count,
        "prompt cells": row.prompt_cells,
        "steps": row.steps,
        "job id": row.job_id + (f" (reused from round {row.reused_job_of})" if row.reused_job_of is not None else ""),
        "GPU-seconds": round(row.gpu_seconds, 1),
    }
    cells.update({component_column(name): row.components.get(name) for name in names})
    cells["composite"] = row.composite
    cells["decision"] = row.decision
    return cells


def _scores(rows: list[RoundRow]) -> list[str]:
    return [component_column(n) for n in _component_names(rows)] + ["composite"]


def round_table_rows(rows: list[RoundRow], best_round: int | None = None) -> list[dict[str, str]]:
    """Plain-text cells by column header, for the report's table (``md_table`` escapes them): an
    unassessed score is the words, never a number; the best round is marked."""
    names, scores = _component_names(rows), _scores(rows)
    table = []
    for row in rows:
        cells = _cells(row, names)
        text = {key: "" if value is None else str(value) for key, value in cells.items()}
        for key in scores:
            value = cells[key]
            text[key] = NOT_ASSESSED if value is None else (f"{value} / 10" if key == "composite" else f"{value:.1f}")
        text["GPU-seconds"] = f"{row.gpu_seconds:.1f}"
        if row.k == best_round:
            text["round"] = f"{row.k} (best)"
        table.append(text)
    return table


def iteration_artifact_rows(rows: list[RoundRow]) -> list[dict[str, Cell]]:
    """The ``iterations`` artifact's rows: numbers stay numbers (``GET /runs/{id}`` reads round and
    composite back), an unassessed score is "not assessed", and every text cell is escaped with
    ``md_inline`` (the Prefect UI renders table cells as markdown)."""
    names, scores = _component_names(rows), set(_scores(rows))
    table = []
    for row in rows:
        cells = _cells(row, names)
        table.append({
            key: NOT_ASSESSED if value is None and key in scores else md_inline(value) if isinstance(value, str) else value
            for key, value in cells.items()
        })  # fmt: skip
    return table


def rounds_sections(report: AnalysisReport, url_for: Callable[[str], str | None]) -> list[Section]:
    """Nothing for a report without rounds; one line for a single round; else the table, the round
    shown, the stop reason and the trajectory plot (when publish_report drew it)."""
    rows, stopped = report.rounds, stop_text(report.stop_reason, report.stop_detail)
    ended = f"the loop ended: {md_inline(stopped)}" if stopped else "the loop ended without a recorded reason"
    if not rows or (len(rows) == 1 and not stopped):
        return []
    if len(rows) == 1:
        return [Section("rounds", f"## Rounds\n\nOne round ran; {ended}.")]
    table = round_table_rows(rows, report.best_round)
    lines = [
        "## Rounds",
        "",
        f"The closed loop ran {len(rows)} rounds: each was planned, run on STACK and scored by code "
        "(a planner proposes plans and may stop the loop; it never scores).",
        "",
        md_table(list(table[0]), [list(cells.values()) for cells in table]),
        "",
    ]
    if report.best_round is not None:
        lines.append(
            f"- best round: {report.best_round} of {len(rows)}; the run's result is its best round, not its last: "
            f"the score card, DE, enrichment, plan, job and plots in this report are round {report.best_round}'s"
        )
    lines.append(f"- {ended}")
    sections = [Section("rounds", "\n".join(lines))]
    if TRAJECTORY in report.outputs:
        sections.append(figure_section(TRAJECTORY, "", TRAJECTORY_ALT, report.outputs[TRAJECTORY], url_for))
    return sections
