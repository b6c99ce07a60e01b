"""Agent (Anthropic Claude) settings (``STACKFLOWS_AGENT__*``).

The API key is not a setting: it comes from the environment (``ANTHROPIC_API_KEY``) or from the
Prefect Secret block named by ``api_key_secret_block``, so it never lands in a parameter, a log or
a ``.env`` that is shared with the run's settings.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class AgentSettings(BaseModel):
    model: str = Field(
        default="claude-sonnet-5-5",
        description="Claude model id. Current models reject non-default sampling parameters and forced tool use.",
    )
    max_tokens: int = Field(
        default=8192, ge=256, le=128_000, description="Output budget per request (adaptive thinking counts here)."
    )
    temperature: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Sampling temperature; unset sends none (current Claude models answer 400 to non-default values).",
    )
    base_url: str | None = Field(
        default=None, description="Messages API root; unset means Anthropic's. Tests point it at a local fake."
    )
    api_key_secret_block: str | None = Field(
        default=None,
        description="Name of a Prefect Secret block holding the API key, read when ANTHROPIC_API_KEY is unset.",
    )
    max_retries: int = Field(
        default=4, ge=0, le=10, description="SDK retries for 408/409/429/5xx/529 (never for a spend-limit 429)."
    )
    timeout_s: float = Field(default=300.0, gt=0, description="Per-request timeout.")
    max_tool_turns: int = Field(
        default=12, ge=2, le=50, description="Most model replies one plan may take before the run fails."
    )
    max_document_chars: int = Field(
        default=60_000, ge=0, description="Document text (OCR) beyond this many characters is cut before sending."
    )
    min_prompt_cells_per_split: int = Field(
        default=10, ge=1, description="A plan needs at least this many prompt cells under each split value."
    )
    min_query_cells: int = Field(default=1, ge=1, description="A plan needs at least this many query cells.")
    max_split_values: int = Field(
        default=8, ge=1, le=64, description="Most contexts one plan may generate under (each one costs GPU time)."
    )
    default_num_steps: int = Field(
        default=10, ge=1, le=1000, description="Generation steps when neither the request nor the model says."
    )
    # Prices for the cost estimate in the report (USD per million tokens); defaults are claude-sonnet-5-5's.
    input_usd_per_mtok: float = Field(default=2.0, ge=0)
    output_usd_per_mtok: float = Field(default=10.0, ge=0)
    cache_write_usd_per_mtok: float = Field(default=2.5, ge=0, description="5-minute cache writes.")
    cache_read_usd_per_mtok: float = Field(default=0.2, ge=0)
