"""The rounds as table rows: the Prefect ``iterations`` artifact (updated after every round) and
the report's rounds table.

Rows hold plain values (str, int, float, None) under the same keys in every row, so a table
renders without gaps; whoever writes them out escapes the text. ``GET /runs/{id}`` reads the
``round``, ``composite`` and ``decision`` keys back, and takes a decision starting with "stop" as
the loop's end: :func:`decision_text` words decisions that way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import get_args

from tasks.grounding.models import ComponentName
from tasks.loop.models import STOP_WORDS, LoopDecision, RoundRecord

Cell = str | int | float | None

# Columns before and after the component scores, in the order a table shows them.
LEADING_COLUMNS = (
    "round", "planned by", "contexts", "control", "query cells", "prompt cells", "steps", "job id", "GPU-seconds",
)
TRAILING_COLUMNS = ("composite", "decision")


def iteration_rows(rounds: Sequence[RoundRecord], decisions: Mapping[int, str]) -> list[dict[str, Cell]]:
    """A row per round; ``decisions`` maps k to what was decided after it ('' while undecided).

    Component columns are those any round has, in the grounding's order, None where a round's
    component was not assessed (or absent).
    """
    names = _component_names(rounds)
    rows = []
    for r in rounds:
        plan = r.plan
        job = r.job_id + (f" (reused from round {r.reused_job_of})" if r.reused_job_of is not None else "")
        row: dict[str, Cell] = {
            "round": r.k,
            "planned by": plan.planned_by,
            "contexts": f"{plan.split_column}: {', '.join(plan.split_values)}",
            "control": plan.control_value,
            "query cells": r.summary.query_cells,
            "prompt cells": describe_filter(plan.prompt_obs_filter),
            "steps": plan.num_steps,
            "job id": job,
            "GPU-seconds": round(r.gpu_seconds, 1),
        }
        for name in names:
            component = r.evaluation.component(name)
            row[component_column(name)] = component.score if component is not None else None
        row["composite"] = r.composite
        row["decision"] = decisions.get(r.k, "")
        rows.append(row)
    return rows


def decision_text(decision: LoopDecision) -> str:
    """'go on', or 'stop: <why, in words> (<the figures>)'."""
    if decision.go_on:
        return "go on"
    words = STOP_WORDS.get(decision.reason or "", decision.reason or "stopped")
    return f"stop: {words}" + (f" ({decision.detail})" if decision.detail else "")


def component_column(name: str) -> str:
    """A component's column header: 'pathway_coherence' -> 'pathway coherence'."""
    return name.replace("_", " ")


def describe_filter(obs_filter: Mapping[str, Sequence[str]] | None) -> str:
    """'all', or 'bulk_labels in CD14+ Monocyte, Dendritic; phase in G1'."""
    if not obs_filter:
        return "all"
    return "; ".join(f"{column} in {', '.join(map(str, values))}" for column, values in obs_filter.items())


def _component_names(rounds: Sequence[RoundRecord]) -> list[str]:
    present = {c.name for r in rounds for c in r.evaluation.components}
    return [name for name in get_args(ComponentName) if name in present]
