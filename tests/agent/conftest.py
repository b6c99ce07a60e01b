"""Fixtures for the agent tests: scanpy's bundled pbmc68k_reduced on disk, and the fake Messages API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from clients.llm.settings import AgentSettings
from clients.settings import Settings, get_settings
from inference.contract import GeneChange
from tests.fake_anthropic_api import FakeMessagesAPI

FAKE_KEY = "sk-ant-fake-3f9c1e7d-never-log-me"


def change(gene: str, lfc: float, q: float = 1e-4, fraction: float = 0.9) -> GeneChange:
    """One gene's DE against its reference, as the job summarises it."""
    return GeneChange(
        gene=gene, mean_treated=2.0 + max(lfc, 0), mean_reference=2.0 - min(lfc, 0), log_fold_change=lfc,
        p_value=q / 10, q_value=q, fraction_same_direction=fraction,
    )


@pytest.fixture(scope="session")
def pbmc_h5ad(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pbmc68k_reduced (700 cells; obs bulk_labels, phase, louvain) written once per session."""
    import scanpy as sc

    path = tmp_path_factory.mktemp("agent-data") / "pbmc68k_reduced.h5ad"
    sc.datasets.pbmc68k_reduced().write_h5ad(path)
    return path


@pytest.fixture
def fake_api() -> Iterator[FakeMessagesAPI]:
    with FakeMessagesAPI() as api:
        yield api


@pytest.fixture
def no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Anthropic credentials from this machine's environment reach a test."""
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL", "ANTHROPIC_PROFILE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def claude_settings(
    settings: Settings, fake_api: FakeMessagesAPI, no_key: None, monkeypatch: pytest.MonkeyPatch
) -> Iterator[AgentSettings]:
    """Agent settings pointing at the fake API, with a fake key in the environment."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", FAKE_KEY)
    monkeypatch.setenv("STACKFLOWS_AGENT__BASE_URL", fake_api.base_url)
    monkeypatch.setenv("STACKFLOWS_AGENT__MAX_RETRIES", "2")
    get_settings.cache_clear()
    yield get_settings().agent
    get_settings.cache_clear()
