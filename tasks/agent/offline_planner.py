"""A plan made without a model: the request's explicit fields, and sound defaults from the data.

Used when no ``ANTHROPIC_API_KEY`` is set. It is deterministic: the same request and data give the
same plan. Where the request leaves the split open it picks a categorical prompt column with
several well-populated values, preferring one whose values the question mentions, then one whose
name looks like a cell label or condition. When the split column has a baseline value (PBS,
vehicle, untreated, ...; see :mod:`tasks.agent.control_choice`) and the request names no control,
that value becomes the control_value: generated once as the reference, not a treated context.
"""

from __future__ import annotations

import re

from clients.llm.settings import AgentSettings
from tasks.request import AnalysisRequest
from tasks.agent.plan import RunPlan
from tasks.agent.control_choice import choose_control
from tasks.agent.plan_checks import PlanInvalid, explicit_fields, without_control
from tasks.agent.plan_data import ObsTable, PlanData

OFFLINE_PLANNER = "offline planner (no ANTHROPIC_API_KEY)"

# Column names that usually hold the contexts people ask about, most telling first.
NAME_HINTS = (
    "cell_type",
    "celltype",
    "cell_label",
    "bulk_labels",
    "label",
    "annotation",
    "condition",
    "treatment",
    "perturbation",
    "stim",
    "disease",
    "tissue",
    "leiden",
    "louvain",
    "cluster",
)


def offline_plan(request: AnalysisRequest, data: PlanData, settings: AgentSettings) -> RunPlan:
    """The plan for ``request`` on ``data`` without a model; raises PlanInvalid if nothing fits."""
    fixed = explicit_fields(request)
    prompt_filter = fixed.get("prompt_obs_filter")
    reasons: list[str] = []
    column = fixed.get("split_column")
    if column is None:
        column, why = _choose_split_column(request.question, data.prompt, prompt_filter, settings)
        reasons.append(why)
    else:
        reasons.append(f"split on {column!r} as the request asks")
    query_filter = fixed.get("query_obs_filter")
    control = fixed.get("control_value")
    if control is None:
        candidates = data.prompt.value_counts(column, prompt_filter)
        if "split_values" in fixed and len(set(fixed["split_values"])) == 1:
            candidates.pop(fixed["split_values"][0], None)  # the request's one context stays treated
        chosen = choose_control(column, candidates, settings.min_prompt_cells_per_split)
        if chosen is not None:
            control, why = chosen
            reasons.append(why)
        else:
            reasons.append(f"no control: no value of {column!r} reads as a baseline, so the query input is the reference")
    else:
        reasons.append(f"control: {control!r} as the request asks")
    values = fixed.get("split_values")
    if values is None:
        values = choose_split_values(
            request.question, data.prompt, column, prompt_filter, query_filter, settings, control
        )
        if not values:
            raise PlanInvalid(
                "The offline planner found no treated context to generate under:",
                [
                    f"prompt column {column!r} has no value other than the control {control!r} with at least "
                    f"{settings.min_prompt_cells_per_split} prompt cells; name split_values in the request, or "
                    "split on another column"
                ],
            )
        reasons.append(
            f"contexts: {len(values)} values with at least {settings.min_prompt_cells_per_split} prompt cells "
            "(those the question names, other than the query's own; else the largest)"
        )
    else:
        reasons.append("contexts as the request names them")
    query_cells = data.query.count(query_filter)
    reasons.append(f"query: {query_cells} cells" + (" matching the request's filter" if query_filter else " (all)"))
    num_steps = fixed.get("num_steps", settings.default_num_steps)
    reasons.append(f"{num_steps} generation steps" + ("" if "num_steps" in fixed else " (default)"))
    plan = RunPlan(
        split_column=column,
        split_values=values,
        control_value=control,
        prompt_obs_filter=prompt_filter,
        query_obs_filter=query_filter,
        num_steps=num_steps,
        seed=request.seed,
        precision=request.precision,
        rationale="Planned without a model; " + "; ".join(reasons) + ".",
        planned_by=OFFLINE_PLANNER,
    )
    return without_control(plan)


def split_column_scores(
    question: str, table: ObsTable, prompt_filter: dict[str, list[str]] | None, settings: AgentSettings
) -> list[tuple[tuple[int, int, int], str]]:
    """Categorical prompt columns worth splitting on, in the table's order, each with its score:
    (values the question names, a telling name, well-populated values up to the most contexts).
    The planner takes the best (the first on ties); the refiner tries them all in that order."""
    words = question_words(question)
    scored = []
    for column in table.obs.columns:
        if not table.is_categorical(column):
            continue
        counts = table.value_counts(column, prompt_filter)
        populated = [v for v, n in counts.items() if n >= settings.min_prompt_cells_per_split]
        if len(populated) < 2 or len(counts) > table.n_obs // 2:
            continue  # nothing to contrast, or an id-like column
        mentioned = sum(1 for value in populated if question_words(value) & words)
        scored.append(((mentioned, _name_hint_rank(column), min(len(populated), settings.max_split_values)), str(column)))
    return scored


def _choose_split_column(
    question: str, table: ObsTable, prompt_filter: dict[str, list[str]] | None, settings: AgentSettings
) -> tuple[str, str]:
    best: tuple[tuple[int, int, int], str] | None = None
    for score, column in split_column_scores(question, table, prompt_filter, settings):
        if best is None or score > best[0]:
            best = (score, column)
    if best is None:
        raise PlanInvalid(
            "The offline planner found no prompt obs column to split on:",
            [
                "no categorical column has two or more values with at least "
                f"{settings.min_prompt_cells_per_split} prompt cells; set split_column and split_values in "
                "the request, or set ANTHROPIC_API_KEY to let the model plan"
            ],
        )
    (mentioned, hint, populated), column = best
    if mentioned:
        why = f"split on {column!r}: the question names {mentioned} of its values"
    elif hint:
        why = f"split on {column!r}: a categorical column whose name suggests cell labels or conditions"
    else:
        why = f"split on {column!r}: the categorical column with the most well-populated values ({populated})"
    return column, why


def choose_split_values(
    question: str,
    table: ObsTable,
    column: str,
    prompt_filter: dict[str, list[str]] | None,
    query_filter: dict[str, list[str]] | None,
    settings: AgentSettings,
    control: str | None = None,
) -> list[str]:
    """The contexts the question names (less the query's own, when it names others too); with none
    named, the best-populated values. The control is never one of them."""
    counts = table.value_counts(column, prompt_filter)  # largest first
    populated = [v for v, n in counts.items() if n >= settings.min_prompt_cells_per_split and v != control]
    words = question_words(question)
    mentioned = [v for v in populated if question_words(v) & words]
    queried = set((query_filter or {}).get(column, []))
    contexts = [v for v in mentioned if v not in queried] or mentioned
    return (contexts or populated)[: settings.max_split_values]


def _name_hint_rank(column: str) -> int:
    name = column.lower()
    for index, hint in enumerate(NAME_HINTS):
        if hint in name:
            return len(NAME_HINTS) - index
    return 0


# Words too common in questions and labels to say which column a question is about.
_STOP_WORDS = {"cell", "the", "and", "for", "with", "how", "what", "would", "look", "type", "context", "other"}


def question_words(text: str) -> set[str]:
    """Lower-case words of three or more letters, plural 's' dropped: 'Monocytes' matches 'CD14+ Monocyte'."""
    words = {w[:-1] if w.endswith("s") and len(w) > 3 else w for w in re.findall(r"[a-z0-9]{3,}", text.lower())}
    return words - _STOP_WORDS
