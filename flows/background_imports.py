"""Modules a flow will need soon, imported on a thread while the flow's main thread waits.

The first subflow's start serialises its parameters with fastapi's ``jsonable_encoder``, which
Prefect imports there: all of fastapi, ~0.3 s on the run's path. The analysis run imports it while
its inputs are checked, when its main thread mostly waits on the HDF5 probe's child process.
Python's import lock makes the subflow's own import wait for the thread's, never run it twice.
"""

from __future__ import annotations

import contextlib
import importlib
import threading

SUBFLOW_START = ("fastapi.encoders",)  # prefect.flows.Flow.serialize_parameters


def import_in_background(modules: tuple[str, ...]) -> threading.Thread:
    """Import ``modules`` on a daemon thread; a failure is left to the import that needs the module."""

    def run() -> None:
        for module in modules:
            with contextlib.suppress(Exception):
                importlib.import_module(module)

    thread = threading.Thread(target=run, name="background-imports", daemon=True)
    thread.start()
    return thread
