"""The one settings object: environment variables prefixed ``STACKFLOWS_`` and an optional ``.env``.

Each outside system owns its section (``STACKFLOWS_<SECTION>__<FIELD>``), defined beside its client,
so a client can be read and changed without touching the others.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from api.settings import ApiSettings
from clients.batch.settings import BatchSettings
from clients.grounding_settings import GroundingSettings
from clients.llm.settings import AgentSettings
from clients.loop_settings import MAX_ITERATIONS, LoopSettings
from clients.model_settings import ModelSettings
from clients.ocr.settings import OcrSettings
from clients.storage.settings import StorageSettings


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


# The Cloud Run flow-run timeout, derived here and nowhere else (docs/deploy.md, "Timeouts that nest").
DEFAULT_FLOW_RUN_MARGIN_S = 2 * 3600.0
CLOUD_RUN_MAX_TIMEOUT_S = 7 * 24 * 3600  # Cloud Run jobs' longest task timeout


def flow_run_timeout_s(
    batch: BatchSettings, margin_s: float = DEFAULT_FLOW_RUN_MARGIN_S, rounds: int = MAX_ITERATIONS
) -> int:
    """The Cloud Run flow-run timeout: the GPU waits of every round (a request may ask for
    ``MAX_ITERATIONS``; a round waits once more for each Spot preemption it retries by itself), the wait
    for a sharded round's merge (once: it never runs on Spot) where sharding is on, plus the margin for
    the rest, so Cloud Run never kills a flow that is still waiting for its job."""
    per_round = (1 + batch.max_preemption_retries) * batch.wait_timeout_s
    if batch.shard_cells is not None:
        per_round += batch.wait_timeout_for(gpu=False)
    return math.ceil(rounds * per_round + margin_s)


def timeout_problems(settings: Settings) -> list[str]:
    """Where the timeouts do not nest, each naming the setting to raise (or lower); empty when they do."""
    batch, problems = settings.batch, []
    if batch.wait_timeout_s <= batch.max_run_duration_s:
        problems.append(
            f"STACKFLOWS_BATCH__WAIT_TIMEOUT_S ({batch.wait_timeout_s:.0f} s) must exceed "
            f"STACKFLOWS_BATCH__MAX_RUN_DURATION_S ({batch.max_run_duration_s} s): the wait counts Batch's queue "
            "time, which max_run_duration does not, so the flow would cancel a job Batch still lets run. "
            "Raise STACKFLOWS_BATCH__WAIT_TIMEOUT_S (or lower STACKFLOWS_BATCH__MAX_RUN_DURATION_S)"
        )
    timeout = flow_run_timeout_s(batch, settings.flow_run_margin_s)
    if timeout > CLOUD_RUN_MAX_TIMEOUT_S:
        problems.append(
            f"the flow-run timeout ({MAX_ITERATIONS} rounds x ((1 + STACKFLOWS_BATCH__MAX_PREEMPTION_RETRIES) x "
            "STACKFLOWS_BATCH__WAIT_TIMEOUT_S + the merge's wait) + STACKFLOWS_FLOW_RUN_MARGIN_S = "
            f"{timeout} s) is above Cloud Run's "
            f"{CLOUD_RUN_MAX_TIMEOUT_S} s: lower STACKFLOWS_BATCH__WAIT_TIMEOUT_S, "
            "STACKFLOWS_BATCH__MAX_PREEMPTION_RETRIES or STACKFLOWS_FLOW_RUN_MARGIN_S"
        )
    return problems


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
    flow_run_margin_s: float = Field(
        default=DEFAULT_FLOW_RUN_MARGIN_S,
        gt=0,
        description=(
            "Time a Cloud Run flow run spends outside its GPU waits (staging, OCR cold starts, planning, "
            "queueing for a GPU slot); the flow-run timeout is the waits plus this (flow_run_timeout_s)."
        ),
    )

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
