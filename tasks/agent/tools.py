"""The tools the planning model may call, and what each one answers from the staged data.

They read cell metadata only (see :mod:`tasks.agent.plan_data`). A bad call (an unknown column, say)
answers with an error result that lists what does exist, so the model can correct itself.
"""

from __future__ import annotations

import json
from typing import Any

from tasks.agent.plan import PlanProposal
from tasks.agent.plan_data import PlanData

SUBMIT_PLAN = "submit_plan"
_WHICH = {"type": "string", "enum": ["prompt", "query"], "description": "Which input: prompt (context) or query cells."}
_OBS_FILTER = {
    "type": "object",
    "additionalProperties": {"type": "array", "items": {"type": "string"}},
    "description": "Keep cells whose obs[column] is one of the listed values, for every column given.",
}

TOOLS: list[dict[str, Any]] = [
    {
        "name": "describe_dataset",
        "description": (
            "Describe the prompt and query h5ad: cell and gene counts, every obs column with its kind, "
            "and for categorical columns the cells per value. Call this first."
        ),
        "input_schema": {"type": "object", "properties": {}, "additionalProperties": False},
    },
    {
        "name": "count_cells",
        "description": (
            "Count the cells of one input that pass an obs filter, optionally split by the values of another "
            "column (e.g. prompt cells per cell type among treated cells)."
        ),
        "input_schema": {
            "type": "object",
            "properties": {
                "which": _WHICH,
                "obs_filter": _OBS_FILTER,
                "group_by": {"type": "string", "description": "Optional obs column to count per value of."},
            },
            "required": ["which"],
            "additionalProperties": False,
        },
    },
    {
        "name": "show_values",
        "description": (
            "List the values of one obs column with their cell counts, most frequent first; 'contains' keeps "
            "values containing that text (case-insensitive), e.g. to find how 'dendritic' is spelled."
        ),
        "input_schema": {
            "type": "object",
            "properties": {
                "which": _WHICH,
                "column": {"type": "string"},
                "contains": {"type": "string"},
                "limit": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
            },
            "required": ["which", "column"],
            "additionalProperties": False,
        },
    },
    {
        "name": SUBMIT_PLAN,
        "description": (
            "Submit the final plan. It is checked against the data: columns and values must exist, every split "
            "value needs enough prompt cells and the query filter must keep query cells. Call it exactly once "
            "when you are sure; if it is rejected you get one chance to fix it."
        ),
        "input_schema": PlanProposal.tool_input_schema(),
    },
]


def run_tool(data: PlanData, name: str, arguments: dict[str, Any]) -> tuple[str, bool]:
    """Answer one data tool call: (JSON text, is_error)."""
    try:
        if name == "describe_dataset":
            return _json(data.describe()), False
        if name == "count_cells":
            return _json(_count_cells(data, **arguments)), False
        if name == "show_values":
            return _json(_show_values(data, **arguments)), False
        return f"Unknown tool {name!r}; the tools are describe_dataset, count_cells, show_values, submit_plan.", True
    except KeyError as missing:
        return _unknown_column(data, arguments.get("which", "prompt"), str(missing.args[0])), True
    except (TypeError, ValueError) as bad:
        return f"Bad arguments for {name}: {bad}", True


def _count_cells(
    data: PlanData, which: str, obs_filter: dict[str, list[str]] | None = None, group_by: str | None = None
) -> dict[str, Any]:
    table = data.side(which)  # type: ignore[arg-type]
    answer: dict[str, Any] = {"which": which, "obs_filter": obs_filter or {}, "cells": table.count(obs_filter)}
    if group_by is not None:
        if group_by not in table.obs.columns:
            raise KeyError(group_by)
        answer["cells_per_value"] = table.value_counts(group_by, obs_filter)
    return answer


def _show_values(
    data: PlanData, which: str, column: str, contains: str | None = None, limit: int = 50
) -> dict[str, Any]:
    table = data.side(which)  # type: ignore[arg-type]
    if column not in table.obs.columns:
        raise KeyError(column)
    counts = table.value_counts(column)
    if contains:
        counts = {v: n for v, n in counts.items() if contains.lower() in v.lower()}
    shown = dict(list(counts.items())[:limit])
    return {"which": which, "column": column, "cells_per_value": shown, "values_not_shown": len(counts) - len(shown)}


def _unknown_column(data: PlanData, which: str, column: str) -> str:
    try:
        columns = list(data.side(which).obs.columns)  # type: ignore[arg-type]
    except ValueError:
        columns = list(data.prompt.obs.columns)
    return f"The {which} data has no obs column {column!r}; its columns are: {', '.join(columns)}."


def _json(value: Any) -> str:
    return json.dumps(value, default=str)


STOP_LOOP = "stop_loop"
# Refinement offers the planning tools and one more: stopping the loop instead of planning a round.
REFINE_TOOLS: list[dict[str, Any]] = [
    *TOOLS,
    {
        "name": STOP_LOOP,
        "description": (
            "Stop the loop instead of planning another round: no untried plan is likely to ground the prediction "
            "better, or the budget left is better kept. Give the reason in a sentence or two; the report shows it."
        ),
        "input_schema": {
            "type": "object",
            "properties": {"reason": {"type": "string", "minLength": 1, "maxLength": 1000}},
            "required": ["reason"],
            "additionalProperties": False,
        },
    },
]
