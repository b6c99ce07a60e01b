"""What the rounds so far cost, and what the next one likely will.

Budgets are checked before a round starts, so the only estimate of the next round's cost is the
rounds already run: their mean. A round that reused an earlier job costs 0 GPU-seconds and pulls the
mean down, as it should (it is what the loop actually spent per round).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tasks.loop.models import RoundRecord


def spent(rounds: Sequence[RoundRecord]) -> tuple[float, float]:
    """GPU-seconds and language-model USD spent by ``rounds``."""
    return sum(r.gpu_seconds for r in rounds), sum(r.llm_usd for r in rounds)


def next_round_estimate(rounds: Sequence[RoundRecord]) -> tuple[float, float]:
    """GPU-seconds and USD the next round is expected to cost: the mean per round so far (0, 0 before any)."""
    if not rounds:
        return 0.0, 0.0
    gpu, usd = spent(rounds)
    return gpu / len(rounds), usd / len(rounds)


def budget_note(rounds: Sequence[RoundRecord], gpu_budget: float | None, usd_budget: float | None) -> str:
    """One line for the refiner: what was spent, what is left, what a round costs.

    'Budget after 2 rounds: GPU 120 of 150 GPU-seconds spent, 30 left (a round takes about 60: the
    next may not fit); language model $0.04 spent, no limit (a round takes about $0.02).'
    """
    gpu, usd = spent(rounds)
    gpu_next, usd_next = next_round_estimate(rounds)
    n = len(rounds)
    gpu_part = _part(gpu, gpu_next, gpu_budget, seconds, " GPU-seconds", bool(rounds))
    usd_part = _part(usd, usd_next, usd_budget, dollars, "", bool(rounds))
    return f"Budget after {n} round{'s' if n != 1 else ''}: GPU {gpu_part}; language model {usd_part}."


def _part(
    used: float, per_round: float, budget: float | None, fmt: Callable[[float], str], unit: str, estimated: bool
) -> str:
    text = f"{fmt(used)}" + (f" of {fmt(budget)}" if budget is not None else "") + f"{unit} spent"
    if budget is None:
        text += ", no limit"
    else:
        text += f", {fmt(max(budget - used, 0.0))} left"
    if estimated:
        fits = "" if budget is None or used + per_round <= budget else ": the next may not fit"
        text += f" (a round takes about {fmt(per_round)}{fits})"
    return text


def seconds(value: float) -> str:
    """GPU-seconds as people read them: 120, 60.5 (no trailing .0)."""
    return f"{value:.1f}".removesuffix(".0")


def dollars(value: float) -> str:
    return f"${value:.2f}" if value >= 0.01 or value == 0 else f"${value:.4f}"
