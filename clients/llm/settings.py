"""Agent (Anthropic) settings (``STACKFLOWS_AGENT__*``)."""

from __future__ import annotations

from pydantic import BaseModel


class AgentSettings(BaseModel):
    pass
