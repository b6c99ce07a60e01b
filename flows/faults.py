"""Injected faults, for proving that a retried run resumes instead of redoing work.

``STACKFLOWS_FAULTS__FAIL_ONCE_AFTER=["stack_inference"]`` makes each flow run fail once, right after
that step, the way a flaky dependency would; with ``STACKFLOWS_FAULTS__CRASH=always`` the flow-run
process dies there instead, the way a killed worker or container would. The next attempt (a Retry
from the dashboard or ``POST /runs/{id}/retry``) goes through. The retry soak lists every step and
sets ``ONE_STEP_PER_RUN`` and ``CRASH=half``, so each run meets one fault of its own. Off by default.
"""

from __future__ import annotations

import hashlib
import os
from typing import Literal

from clients.settings import get_settings

CRASH_EXIT_CODE = 70  # what the worker reports for a crashed run: "exited with non-zero status code 70"


class InjectedFault(RuntimeError):
    """Raised by fault_point; never raised unless the fault settings ask for it."""


def fault_point(step: str, run_id: str, how: Literal["configured", "crash"] = "configured") -> None:
    """Fail (or crash) flow run ``run_id`` the first time it passes ``step``, if the settings ask for it.

    ``how="crash"`` is for points inside the STACK subflow: a *failure* there cancels the GPU job by
    design, so the fault that matters there is the process dying.
    """
    settings = get_settings()
    faults = settings.faults
    if step not in faults.fail_once_after:
        return
    if faults.one_step_per_run and step != faults.fail_once_after[_pick(run_id, "step") % len(faults.fail_once_after)]:
        return
    marker = settings.data_dir / "faults" / f"{run_id}-{step}"
    marker.parent.mkdir(parents=True, exist_ok=True)
    try:
        marker.touch(exist_ok=False)
    except FileExistsError:
        return  # this run met its fault already
    crash = how == "crash" or faults.crash == "always" or (faults.crash == "half" and _pick(run_id, "crash") % 2 == 0)
    if crash:
        print(f"injected crash after step '{step}' (STACKFLOWS_FAULTS__CRASH): the flow-run process exits now", flush=True)
        os._exit(CRASH_EXIT_CODE)
    raise InjectedFault(f"injected fault after step '{step}' (STACKFLOWS_FAULTS__FAIL_ONCE_AFTER); retry the run")


def round_step(step: str, k: int) -> str:
    """A step's name in round ``k``: round 1 keeps the plain names; later rounds add ``@k`` (``planned@2``)."""
    return step if k == 1 else f"{step}@{k}"


def _pick(run_id: str, salt: str) -> int:
    """A number fixed by the run id: the same run meets the same fault on every worker."""
    return int(hashlib.sha256(f"{salt}:{run_id}".encode()).hexdigest()[:8], 16)
