"""Where a subflow run sits (tasks/run_tree.py), against the session's Prefect server: the chain of
runs above it, read once per process (the round, its STACK subflow and its progress all ask)."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import SyncPrefectClient
from prefect.context import FlowRunContext

from tasks.run_tree import flow_runs_above, root_flow_run_id

seen: dict[str, Any] = {}


@flow
def _bottom() -> None:
    run = FlowRunContext.get().flow_run
    seen["bottom"] = run
    seen["chains"] = [flow_runs_above(run) for _ in range(3)]
    seen["root"] = root_flow_run_id(run)


@flow
def _middle() -> None:
    seen["middle"] = FlowRunContext.get().flow_run
    seen["middle_chain"] = flow_runs_above(seen["middle"])
    _bottom()


@flow
def _top() -> None:
    seen["top"] = FlowRunContext.get().flow_run
    _middle()


def test_the_runs_above_a_subflow_are_read_once(prefect_api: None, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[str] = []  # the reads run_tree makes (the engine makes its own)
    for name in ("read_task_run", "read_flow_run"):
        real = getattr(SyncPrefectClient, name)

        def counted(self: SyncPrefectClient, run_id: Any, _real: Any = real, _name: str = name) -> Any:
            if sys._getframe(1).f_code.co_filename.endswith("run_tree.py"):
                reads.append(_name)
            return _real(self, run_id)

        monkeypatch.setattr(SyncPrefectClient, name, counted)
    _top()

    top, middle = seen["top"], seen["middle"]
    middle_stand_in = seen["middle_chain"][0][1]
    assert seen["middle_chain"] == [(top.id, middle.parent_task_run_id)] == [(top.id, middle_stand_in)]
    chain = [(middle.id, seen["bottom"].parent_task_run_id), (top.id, middle.parent_task_run_id)]
    assert seen["chains"] == [chain, chain, chain]
    assert seen["root"] == str(top.id)
    # the middle run's walk: its stand-in, the top run; the bottom's: its stand-in, the rest known
    assert reads == ["read_task_run", "read_flow_run", "read_task_run"]
