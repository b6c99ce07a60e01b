"""Closed-loop settings (``STACKFLOWS_LOOP__*``): how many rounds, when a prediction is good enough."""

from __future__ import annotations

from pydantic import BaseModel, Field

MAX_ITERATIONS = 5  # a request may ask for at most this many rounds


class LoopSettings(BaseModel):
    max_iterations: int = Field(default=3, ge=1, le=MAX_ITERATIONS, description="Rounds when a request names none.")
    score_threshold: float = Field(default=7.0, ge=0, le=10, description="Composite that ends the loop as grounded.")
    gpu_seconds_budget: float | None = Field(default=None, gt=0, description="GPU-seconds a run may spend; unset: no limit.")
    llm_usd_budget: float | None = Field(default=None, gt=0, description="Language-model USD a run may spend; unset: no limit.")
    plateau_min_gain: float = Field(
        default=1.0, ge=0, description="The loop stops when the best composite has not risen this much over plateau_rounds."
    )
    plateau_rounds: int = Field(default=2, ge=1, description="Rounds without that gain that make a plateau.")
