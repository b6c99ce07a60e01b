"""Which value of a split column is the experiment's baseline, when no one said.

A synthetic control (the query cells generated under the baseline too) is a far better reference
than the query input, so the offline planner takes one when the data plainly has it. "Plainly"
is strict: every word of the value must be a baseline word (PBS, vehicle, DMSO, untreated, ...) or
a neutral qualifier (a dose, a time point, "sgRNA"), so "IFNG + DMSO" or "Naive T" are never a
control. Words that also name cell states or things ("naive", "nt") count only in a column whose
name says it holds conditions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# Words that on their own say "baseline".
BASELINE_WORDS = frozenset(
    {
        "pbs", "vehicle", "veh", "dmso", "untreated", "unstimulated", "unstim", "nonstimulated", "control",
        "ctrl", "ctl", "mock", "nontargeting", "non-targeting", "baseline", "placebo", "saline", "sham",
        "uninfected", "unperturbed",
    }
)
# Baseline words only in a column that holds conditions: elsewhere they name cell states or genes.
WEAK_BASELINE_WORDS = frozenset({"naive", "nt", "none", "wt", "wildtype"})
# Words that may stand beside a baseline word without making it a treatment.
NEUTRAL_WORDS = frozenset(
    {"only", "treated", "treatment", "condition", "sgrna", "sg", "guide", "grna", "sirna", "shrna", "cells",
     "sample", "group", "arm", "well", "rep", "replicate", "h", "hr", "hrs", "hour", "hours", "d", "day", "days",
     "min", "um", "nm", "mm", "ml", "ug", "ng", "pct"}
)
# Column names that hold conditions rather than cell types or clusters.
CONDITION_COLUMN_HINTS = (
    "condition", "treatment", "perturbation", "stim", "drug", "compound", "guide", "sgrna", "group", "sample",
    "infection", "genotype", "dose", "arm",
)


def baseline_strength(column: str, value: str) -> int:
    """2: the value is a baseline by strong words alone; 1: by a weak word in a condition column; 0: not one."""
    words = _words(value)
    if not words:
        return 0
    strong = [w for w in words if w in BASELINE_WORDS]
    weak = [w for w in words if w in WEAK_BASELINE_WORDS]
    others = [w for w in words if w not in BASELINE_WORDS and w not in WEAK_BASELINE_WORDS and not _neutral(w)]
    if others:
        return 0  # another word (a drug, a gene, a cell type) makes it a treatment or a label
    if strong:
        return 2
    if weak and any(hint in column.lower() for hint in CONDITION_COLUMN_HINTS):
        return 1
    return 0


def choose_control(column: str, cells_per_value: Mapping[str, int], min_cells: int) -> tuple[str, str] | None:
    """The baseline value of ``column`` with enough prompt cells, and why; None when there is none.

    Deterministic: strongest match first, then most cells, then the value's text.
    """
    candidates = [
        (baseline_strength(column, value), n, value)
        for value, n in cells_per_value.items()
        if n >= min_cells
    ]
    candidates = [c for c in candidates if c[0] > 0]
    if not candidates:
        return None
    strength, cells, value = min(candidates, key=lambda c: (-c[0], -c[1], c[2]))
    others = [c[2] for c in candidates if c[2] != value]
    why = (
        f"control: {value!r}, a baseline value of {column!r} ({cells} prompt cells): the query cells are also "
        "generated under it and every treated context is compared with it cell by cell; it is not one of the "
        "treated contexts"
    )
    if others:
        why += f" (other baseline-like values, kept as contexts: {', '.join(repr(o) for o in sorted(others))})"
    return value, why


def _words(value: str) -> list[str]:
    text = value.lower().replace("non-targeting", "nontargeting").replace("non targeting", "nontargeting")
    return re.findall(r"[a-z]+|[0-9]+(?:\.[0-9]+)?", text)


def _neutral(word: str) -> bool:
    return word.isdigit() or re.fullmatch(r"[0-9.]+", word) is not None or word in NEUTRAL_WORDS
