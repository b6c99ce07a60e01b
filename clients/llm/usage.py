"""Tokens an agent step used and an estimate of what they cost."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from clients.llm.settings import AgentSettings


class AgentUsage(BaseModel):
    """Summed over every Messages API reply of one agent step, for the report."""

    model: str
    requests: int = Field(default=0, description="Replies received (the SDK's retries are not counted).")
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    estimated_cost_usd: float = 0.0

    def add_reply(self, usage: Any, settings: AgentSettings) -> None:
        """Count one reply's ``usage`` (an SDK ``Usage``) and price it with the settings' rates."""
        fresh = int(usage.input_tokens or 0)
        out = int(usage.output_tokens or 0)
        written = int(getattr(usage, "cache_creation_input_tokens", 0) or 0)
        read = int(getattr(usage, "cache_read_input_tokens", 0) or 0)
        self.requests += 1
        self.input_tokens += fresh
        self.output_tokens += out
        self.cache_creation_input_tokens += written
        self.cache_read_input_tokens += read
        cost = (
            fresh * settings.input_usd_per_mtok
            + out * settings.output_usd_per_mtok
            + written * settings.cache_write_usd_per_mtok
            + read * settings.cache_read_usd_per_mtok
        ) / 1e6
        self.estimated_cost_usd = round(self.estimated_cost_usd + cost, 6)

    def line(self) -> str:
        """One log line; numbers only, never content."""
        return (
            f"{self.model}: {self.requests} replies, {self.input_tokens} input + "
            f"{self.cache_read_input_tokens} cached-read + {self.cache_creation_input_tokens} cache-write "
            f"+ {self.output_tokens} output tokens, about ${self.estimated_cost_usd:.4f}"
        )
