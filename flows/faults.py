"""Injected faults, for proving that a retried run resumes instead of redoing work.

``STACKFLOWS_FAULTS__FAIL_ONCE_AFTER=["stack_inference"]`` makes each flow run fail once, right after
that step, the way a crashed worker or a flaky dependency would. The second attempt (a Retry from
the dashboard or ``POST /runs/{id}/retry``) goes through. Off by default.
"""

from __future__ import annotations

from pathlib import Path

from clients.settings import FaultSettings

class InjectedFault(RuntimeError):
    """Raised by fail_once_after; never raised unless the fault setting asks for it."""


def fail_once_after(step: str, run_id: str, settings: FaultSettings, marker_dir: Path) -> None:
    """Raise InjectedFault the first time ``step`` completes in flow run ``run_id``, if configured."""
    if step not in settings.fail_once_after:
        return
    marker = marker_dir / f"{run_id}-{step}"
    marker.parent.mkdir(parents=True, exist_ok=True)
    try:
        marker.touch(exist_ok=False)
    except FileExistsError:
        return
    raise InjectedFault(f"injected fault after step '{step}' (STACKFLOWS_FAULTS__FAIL_ONCE_AFTER); retry the run")
