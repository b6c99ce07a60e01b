"""The automation that ends zombie runs: a flow run whose process, worker or container died with it.

Nothing is left to report such a run's end, so it would stay Running forever. Every flow run sends
a heartbeat event (``prefect.flow-run.heartbeat``) every ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``
seconds while it runs. This automation is Prefect's proactive trigger for that ("How to detect and
respond to zombie flows"): after a run's heartbeat, expect another heartbeat or a terminal state
within ``MISSED_HEARTBEATS`` heartbeats, one run at a time (``for_each`` resource id), else set the
run Crashed. A crashed run's GPU job keeps running; a Retry finds it and collects it.

The window is read from the set-up's own environment, which must match the flow runs': the local
stack gives both the same variables, and the gcp set-up writes it into the Cloud Run pool's env.
"""

from __future__ import annotations

from datetime import timedelta

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification
from prefect.settings import get_current_settings

ZOMBIE_AUTOMATION = "stackflows-crash-zombie-runs"
MISSED_HEARTBEATS = 3  # one late heartbeat on a busy machine is not a death
TERMINAL_EVENTS = ("Completed", "Failed", "Cancelled", "Crashed")


def heartbeat_s() -> int:
    """Seconds between flow-run heartbeats, as this environment's flow runs send them."""
    frequency = get_current_settings().flows.heartbeat_frequency
    if frequency is None:
        raise ValueError(
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY is unset (heartbeats off): set it to 30 or more so the "
            "zombie automation can tell a dead run from a live one"
        )
    return frequency


def zombie_automation(heartbeat: int) -> AutomationCore:
    """Marks a flow run Crashed when ``MISSED_HEARTBEATS`` heartbeats of ``heartbeat`` s do not come."""
    window = MISSED_HEARTBEATS * heartbeat
    return AutomationCore(
        name=ZOMBIE_AUTOMATION,
        description=(
            f"Marks a flow run Crashed when no heartbeat or end state follows its last heartbeat within "
            f"{window} s (its process, worker or container died). Created by deployments.setup."
        ),
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *(f"prefect.flow-run.{state}" for state in TERMINAL_EVENTS)},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=window),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"No heartbeat for {window} s: the flow-run process or its worker died. Retry the "
                "run: its GPU job kept running and is picked up, not submitted again.",
            )
        ],
    )


def _comparable(automation: AutomationCore) -> dict:
    """What the automation does, without the ids the server gives it and its trigger."""
    data = AutomationCore.model_validate(automation.model_dump()).model_dump(mode="json")
    data["trigger"].pop("id", None)
    for key in ("after", "expect"):  # sets: their JSON lists come in whatever order the set iterates
        data["trigger"][key] = sorted(data["trigger"].get(key) or [])
    return data


async def ensure_zombie_automation(client: PrefectClient, heartbeat: int | None = None) -> tuple[str, str]:
    """Create the automation once; update it when the window changed; remove duplicates by name.

    Returns ``(name, action)`` with action created, updated or unchanged.
    """
    wanted = zombie_automation(heartbeat or heartbeat_s())
    existing = await client.read_automations_by_name(ZOMBIE_AUTOMATION)
    if not existing:
        await client.create_automation(wanted)
        return ZOMBIE_AUTOMATION, "created"
    keep, *extra = existing
    for duplicate in extra:  # two set-ups racing each other; one is enough
        await client.delete_automation(duplicate.id)
    if _comparable(keep) == _comparable(wanted) and not extra:
        return ZOMBIE_AUTOMATION, "unchanged"
    await client.update_automation(keep.id, wanted)
    return ZOMBIE_AUTOMATION, "updated"
