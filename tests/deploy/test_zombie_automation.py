"""The automation that marks a run Crashed when its heartbeats stop, against the session's real
Prefect server: created by the set-up, once, with the window the flow runs' heartbeats imply."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from prefect import get_client
from prefect.client.schemas.objects import StateType

from deployments.automations import (
    MISSED_HEARTBEATS,
    ZOMBIE_AUTOMATION,
    ensure_zombie_automation,
)


async def _ensure(heartbeat: int) -> str:
    async with get_client() as client:
        return (await ensure_zombie_automation(client, heartbeat))[1]


async def _read() -> list:
    async with get_client() as client:
        return await client.read_automations_by_name(ZOMBIE_AUTOMATION)


def test_the_zombie_automation_is_made_once_and_follows_the_heartbeat(prefect_api: None) -> None:
    first = asyncio.run(_ensure(30))
    assert first in ("created", "unchanged")
    assert asyncio.run(_ensure(30)) == "unchanged"
    (automation,) = asyncio.run(_read())

    trigger = automation.trigger
    assert trigger.posture == "Proactive"
    assert trigger.after == {"prefect.flow-run.heartbeat"}
    assert {"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
            "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"} == trigger.expect
    assert trigger.for_each == {"prefect.resource.id"}
    assert trigger.within == timedelta(seconds=MISSED_HEARTBEATS * 30)
    (action,) = automation.actions
    assert action.type == "change-flow-run-state" and action.state == StateType.CRASHED

    assert asyncio.run(_ensure(60)) == "updated"
    assert asyncio.run(_ensure(60)) == "unchanged"
    (automation,) = asyncio.run(_read())
    assert automation.trigger.within == timedelta(seconds=MISSED_HEARTBEATS * 60)



def test_the_same_automation_compares_equal_whatever_order_its_event_sets_come_in() -> None:
    """The server returns ``expect`` as a JSON list that becomes a set again, and a set's iteration
    (and JSON) order depends on its insertion history and the process's hash seed: the comparison a
    second set-up makes must not depend on it, or it rewrites the automation ("updated", where the
    e2e check wants every line unchanged)."""
    from deployments.automations import _comparable, zombie_automation

    trigger = _comparable(zombie_automation(30))["trigger"]
    assert trigger["expect"] == sorted(zombie_automation(30).trigger.expect)
    assert trigger["after"] == ["prefect.flow-run.heartbeat"]
