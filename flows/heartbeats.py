"""Flow-run heartbeats that stop when their flow does.

Prefect 3.9's sync flow engine sends a flow run's heartbeats (``prefect.flow-run.heartbeat``, which
the zombie automation in ``deployments/automations.py`` watches) from a thread that sleeps in 1 s
steps, and joins that thread when the flow ends (``prefect.flow_engine._send_heartbeats``). So every
sync flow's exit waits for a sleep to run out: 0.5-0.7 s measured at the end of each STACK subflow
and of each round, on the way to the next step of the run. The heartbeats here are the same events
from the same engine, on a thread that waits on its stop event instead: it ends, and the flow with
it, as soon as the flow's work is done.

``install()`` puts this in the engine's place for the Prefect release it was written against (the
one ``pyproject.toml`` pins) and leaves any other release alone; ``flows/__init__.py`` calls it, so
it holds in every process that runs one of these flows.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import prefect
import prefect.flow_engine

# The release whose ``_send_heartbeats(engine, join_on_exit=True)`` this stands in for.
WRITTEN_FOR = "3.9."
JOIN_TIMEOUT_S = 2.0  # as Prefect's: a stuck emit must not hang the flow's exit


@contextmanager
def send_heartbeats(engine: Any, join_on_exit: bool = True) -> Iterator[None]:
    """Heartbeats for ``engine``'s flow run every ``engine.heartbeat_seconds`` while the block runs
    (none when heartbeats are off); on exit the thread is told to stop and, if asked, joined."""
    every = engine.heartbeat_seconds  # None: off; else already at least Prefect's 30 s minimum
    if every is None:
        yield
        return
    resource, related = engine._build_heartbeat_event_template()
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            run = engine.flow_run
            if run is not None and run.state is not None and run.state.is_final():
                return
            try:
                engine._emit_flow_run_heartbeat(resource, related)
            except Exception:  # a missed heartbeat is the automation's business, not the flow's
                engine.logger.debug("Failed to emit heartbeat", exc_info=True)
            stop.wait(every)

    # The thread sees the flow's context (its settings, hence its API URL), as Prefect's does.
    thread = threading.Thread(target=contextvars.copy_context().run, args=(beat,), daemon=True,
                              name="flow-run-heartbeats")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        if join_on_exit:
            thread.join(timeout=JOIN_TIMEOUT_S)


def install() -> bool:
    """Use ``send_heartbeats`` in Prefect's flow engine; True if it now does (this Prefect release)."""
    if not prefect.__version__.startswith(WRITTEN_FOR):
        return False
    prefect.flow_engine._send_heartbeats = send_heartbeats
    return True
