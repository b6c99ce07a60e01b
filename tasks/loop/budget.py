"""What the rounds so far cost, and what the next one likely will.

Budgets are checked before a round starts, so the only estimate of the next round's cost is the
rounds already run: their mean. A round that reused an earlier job costs 0 GPU-seconds and pulls the
mean down, as it should (it is what the loop actually spent per round).
"""

from __future__ import annotations

from collections.abc import Sequence

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
    """One line for the refiner: what was spent, what is left, what a round costs."""
    gpu, usd = spent(rounds)
    gpu_next, usd_next = next_round_estimate(rounds)
    n = len(rounds)
    parts = [
        _part(f"{seconds(gpu)} GPU-seconds", gpu_budget, gpu, f"{seconds(gpu_next)} GPU-seconds", seconds),
        _part(f"{dollars(usd)} of language model", usd_budget, usd, dollars(usd_next), dollars),
    ]
    return f"Spent over {n} round{'s' if n != 1 else ''}: " + "; ".join(parts) + "."


def _part(spent_text: str, budget: float | None, used: float, per_round: str, fmt) -> str:
    if budget is None:
        return f"{spent_text} (no budget; about {per_round} a round)"
    left = max(budget - used, 0.0)
    return f"{spent_text} of {fmt(budget)} ({fmt(left)} left; about {per_round} a round)"


def seconds(value: float) -> str:
    """GPU-seconds as people read them: 120, 60.5 (no trailing .0)."""
    return f"{value:.1f}".removesuffix(".0")


def dollars(value: float) -> str:
    return f"${value:.2f}" if value >= 0.01 or value == 0 else f"${value:.4f}"
