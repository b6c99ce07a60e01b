"""deployments.processes on real processes: stopping a stack process also stops what it started in
sessions of its own (a worker's flow runs, their GPU jobs), and credentials are written owner-only."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

from deployments.local_stack import write_private
from deployments.processes import alive, descendants, start, wait_until

# A parent that starts a child in a new session (as Prefect's runner and our local GPU runner do)
# and waits on it: a signal to the parent's process group never reaches that child.
DETACHING_PARENT = (
    "import subprocess, sys; "
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True); "
    "child.wait()"
)


def test_stopping_a_process_stops_the_children_it_detached(tmp_path: Path) -> None:
    parent = start("detaching", [sys.executable, "-c", DETACHING_PARENT], {}, tmp_path, tmp_path)
    try:
        (child,) = wait_until(lambda: descendants(parent.popen.pid), 30, "the detached child to start", watch=[parent])
        parent.stop(timeout=5)
        assert parent.popen.poll() is not None
        assert not alive(child), "the detached child outlived its parent's stop"
    finally:
        parent.stop(timeout=1)


def test_credentials_are_written_owner_only_even_over_a_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "local-stack.env"
    path.write_text("old\n")
    path.chmod(0o644)
    write_private(path, "PREFECT_API_AUTH_STRING=admin:secret\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == "PREFECT_API_AUTH_STRING=admin:secret\n"
    assert [p.name for p in tmp_path.iterdir()] == ["local-stack.env"]  # no temporary file left
