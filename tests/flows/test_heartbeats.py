"""Flow-run heartbeats (flows/heartbeats.py): every flow, subflows too, still sends them (the zombie
automation marks a run Crashed by them), and their thread is gone when the flow returns, without the
1 s sleeps Prefect's own thread makes each flow's exit wait for."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import prefect.flow_engine
import pytest
from prefect import flow
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

import flows  # noqa: F401  (installs the heartbeats, as every flow module of this project does)
from flows.heartbeats import send_heartbeats


@flow
def _inner() -> str:
    return "inner"


@flow
def _outer() -> str:
    return _inner()


def _heartbeat_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "flow-run-heartbeats"]


def test_flows_and_subflows_send_heartbeats_and_stop_them_when_they_end(
    prefect_api: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert prefect.flow_engine._send_heartbeats is send_heartbeats
    beats: list[str] = []
    monkeypatch.setattr(
        prefect.flow_engine, "emit_event", lambda event, resource, related: beats.append(resource["prefect.resource.id"])
    )
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 30}):
        state = _outer(return_state=True)
    assert state.is_completed() and state.result() == "inner"
    assert len(set(beats)) == 2, beats  # the run and its subflow run, one heartbeat each at its start
    assert all(b.startswith("prefect.flow-run.") for b in beats)
    assert _heartbeat_threads() == []


def test_heartbeats_are_off_when_prefect_says_so() -> None:
    engine = SimpleNamespace(heartbeat_seconds=None)
    with send_heartbeats(engine):
        assert _heartbeat_threads() == []


def test_the_heartbeat_thread_waits_on_its_stop_and_never_sleeps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prefect's thread sleeps 1 s at a time after each heartbeat, and the exit joins it: the sleep is
    what every flow's end waited for."""
    emitted = threading.Event()
    sleeps: list[float] = []
    real_sleep = time.sleep
    monkeypatch.setattr(time, "sleep", lambda s: (sleeps.append(s), real_sleep(s)))

    def emit(resource: Any, related: Any) -> None:
        emitted.set()

    engine = SimpleNamespace(
        heartbeat_seconds=30,
        flow_run=None,
        logger=None,
        _build_heartbeat_event_template=lambda: ({}, []),
        _emit_flow_run_heartbeat=emit,
    )
    with send_heartbeats(engine):
        assert emitted.wait(10)
        (thread,) = _heartbeat_threads()
    assert not thread.is_alive()  # joined on exit
    assert sleeps == []
