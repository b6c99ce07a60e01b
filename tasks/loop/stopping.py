"""The rules that end the closed loop, each with the figures that made it fire.

Three moments, three functions: :func:`after_round` (the round's score is in), :func:`on_refined`
(the refiner answered with the next plan, or none) and :func:`before_round` (would the next round
go over a budget). Each returns a :class:`LoopDecision`; the first rule that applies wins, and its
``detail`` names the numbers so the report can say exactly why the loop stopped.
"""

from __future__ import annotations

from collections.abc import Sequence

from clients.loop_settings import LoopSettings
from tasks.loop.budget import dollars, next_round_estimate, seconds, spent
from tasks.loop.models import (
    LoopDecision,
    RefinedPlan,
    RoundRecord,
    StopReason,
    plan_identity,
)

NOT_ASSESSABLE_ROUNDS = 2  # rounds without a composite that end the loop


def after_round(
    rounds: Sequence[RoundRecord], *, max_iterations: int, threshold: float, settings: LoopSettings
) -> LoopDecision:
    """Stop or go on once the latest round is scored: threshold, not assessable, max rounds, plateau."""
    if not rounds:
        raise ValueError("after_round needs at least one finished round; call it after a round is scored")
    last = rounds[-1]
    if last.composite is not None and last.composite >= threshold:
        return _stop("threshold_met", f"round {last.k}: composite {last.composite} >= threshold {_num(threshold)}")
    unscored = [r.k for r in rounds if r.composite is None]
    if last.composite is None and len(unscored) >= NOT_ASSESSABLE_ROUNDS:
        return _stop(
            "not_assessable",
            f"rounds {_listing(unscored)} have no composite (fewer than two components assessed): "
            "give expectations the prediction can be scored against",
        )
    if len(rounds) >= max_iterations:
        return _stop("max_iterations", f"{len(rounds)} of at most {max_iterations} rounds ran")
    plateau = _plateau(rounds, settings)
    if plateau:
        return _stop("plateau", plateau)
    score = "no composite" if last.composite is None else f"composite {last.composite} < threshold {_num(threshold)}"
    return LoopDecision(go_on=True, detail=f"round {last.k}: {score}; round {len(rounds) + 1} of {max_iterations} next")


def before_round(
    rounds: Sequence[RoundRecord], *, gpu_seconds_budget: float | None, llm_usd_budget: float | None
) -> LoopDecision:
    """Stop when what was spent plus the mean per round so far would exceed a budget."""
    gpu, usd = spent(rounds)
    gpu_next, usd_next = next_round_estimate(rounds)
    if gpu_seconds_budget is not None and gpu + gpu_next > gpu_seconds_budget:
        return _stop(
            "budget",
            f"spent {seconds(gpu)} GPU-seconds; the next round would add about {seconds(gpu_next)} "
            f"(the mean so far): over the budget of {seconds(gpu_seconds_budget)}",
        )
    if llm_usd_budget is not None and usd + usd_next > llm_usd_budget:
        return _stop(
            "budget",
            f"spent {dollars(usd)} on the language model; the next round would add about {dollars(usd_next)} "
            f"(the mean so far): over the budget of {dollars(llm_usd_budget)}",
        )
    return LoopDecision(go_on=True, detail="within budget" if rounds else "no round has run yet")


def on_refined(refined: RefinedPlan, rounds: Sequence[RoundRecord]) -> LoopDecision:
    """Stop when the refiner chose to stop, or proposed a plan an earlier round already ran."""
    if refined.plan is None:
        why = refined.stop_reason or "it gave no reason"
        return _stop("agent_stopped", f"{refined.planned_by}: {why}")
    identity = plan_identity(refined.plan)
    same = next((r for r in rounds if plan_identity(r.plan) == identity), None)
    if same is not None:
        return _stop(
            "plan_repeated",
            f"the next plan equals round {same.k}'s (split on {same.plan.split_column!r}: "
            f"{', '.join(same.plan.split_values)}; control {same.plan.control_value!r}; {same.plan.num_steps} steps)",
        )
    return LoopDecision(go_on=True, detail=f"a new plan by {refined.planned_by}")


def best_round(rounds: Sequence[RoundRecord]) -> int:
    """k of the round with the highest composite; the earliest on ties; unscored rounds rank lowest."""
    if not rounds:
        raise ValueError("best_round needs at least one round")
    best = rounds[0]
    for r in rounds[1:]:
        if r.composite is not None and (best.composite is None or r.composite > best.composite):
            best = r
    return best.k


def _plateau(rounds: Sequence[RoundRecord], settings: LoopSettings) -> str | None:
    """Why the best composite has plateaued, or None: the best of all rounds is below the best of
    the rounds before the last ``plateau_rounds`` plus ``plateau_min_gain``."""
    window = settings.plateau_rounds
    if len(rounds) < window + 1:
        return None
    before = _best_composite(rounds[:-window])
    if before is None:
        return None  # nothing scored before the window: any score now is a gain
    now = _best_composite(rounds)
    assert now is not None  # rounds[:-window] is part of rounds
    gain = now - before
    if gain >= settings.plateau_min_gain:
        return None
    return (
        f"best {_num(before)} after round {rounds[-window - 1].k}, {_num(now)} after round {rounds[-1].k}: "
        f"gain {_num(gain)} < {_num(settings.plateau_min_gain)} over {window} round{'s' if window != 1 else ''}"
    )


def _best_composite(rounds: Sequence[RoundRecord]) -> float | None:
    scores = [r.composite for r in rounds if r.composite is not None]
    return max(scores) if scores else None


def _stop(reason: StopReason, detail: str) -> LoopDecision:
    return LoopDecision(go_on=False, reason=reason, detail=detail)


def _num(value: float) -> str:
    """7.0 -> '7', 4.5 -> '4.5': figures as the request and the score card write them."""
    return f"{value:g}"


def _listing(ks: list[int]) -> str:
    return ", ".join(str(k) for k in ks[:-1]) + f" and {ks[-1]}" if len(ks) > 1 else str(ks[0])
