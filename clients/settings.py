"""The one settings object: environment variables prefixed ``STACKFLOWS_`` and an optional ``.env``.

Each outside system owns its section (``STACKFLOWS_<SECTION>__<FIELD>``), defined beside its client,
so a client can be read and changed without touching the others.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from api.settings import ApiSettings
from clients.batch.settings import BatchSettings
from clients.grounding_settings import GroundingSettings
from clients.llm.settings import AgentSettings
from clients.loop_settings import LoopSettings
from clients.ocr.settings import OcrSettings
from clients.storage.settings import StorageSettings
from clients.model_settings import ModelSettings


class FaultSettings(BaseModel):
    """Injected faults for resume tests and the retry soak (see flows/faults.py); off by default."""

    fail_once_after: list[str] = Field(
        default_factory=list,
        description="Steps after which each flow run fails once (testing only): staged, planned, submitted, "
        "stack_inference, interpreted.",
    )
    one_step_per_run: bool = Field(
        default=False, description="Fault each run after only one of the listed steps, picked by its run id."
    )
    crash: Literal["never", "always", "half"] = Field(
        default="never",
        description="Instead of failing, kill the flow-run process (as a dead worker would): never, always, "
        "or for half of the runs (picked by run id).",
    )


class Settings(BaseSettings):
    """Everything a run needs to know about where things live; defaults run on one laptop."""

    model_config = SettingsConfigDict(
        env_prefix="STACKFLOWS_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
    )

    data_dir: Path = Field(
        default=Path(".stackflows"),
        description="Root of everything the embedded defaults write: objects, job directories, reports.",
    )
    storage: StorageSettings = Field(default_factory=StorageSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    agent: AgentSettings = Field(default_factory=AgentSettings)
    ocr: OcrSettings = Field(default_factory=OcrSettings)
    grounding: GroundingSettings = Field(default_factory=GroundingSettings)
    loop: LoopSettings = Field(default_factory=LoopSettings)
    faults: FaultSettings = Field(default_factory=FaultSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)

    @property
    def storage_root(self) -> str:
        """Where objects go: the configured ``gs://`` / ``file://`` root, else ``file://<data_dir>/objects``."""
        if self.storage.root:
            return self.storage.root.rstrip("/")
        return (self.data_dir / "objects").resolve().as_uri()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings read once per process; tests call ``get_settings.cache_clear()`` after changing the environment."""
    return Settings()
