"""Long-running processes of the local stack (server, worker, API) for the demo and the end-to-end
tests: started with their output in a log file, waited on with a bounded deadline, stopped politely
and then firmly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log: Path

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 20) -> None:
        """SIGINT (what Ctrl-C sends; workers and servers shut down cleanly), then SIGKILL."""
        if self.popen.poll() is not None:
            return
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.popen.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue


def start(name: str, command: list[str], env: dict[str, str], log_dir: Path, cwd: Path) -> Process:
    """Start ``command`` in its own process group (so stopping it stops its children too)."""
    log = log_dir / f"{name}.log"
    handle = log.open("ab")
    popen = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
    )
    handle.close()
    return Process(name=name, popen=popen, log=log)


def wait_until(
    check: Callable[[], T | None],
    timeout: float,
    what: str,
    watch: list[Process] = (),
    interval: float = 0.5,
) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` (and show the logs of
    the processes in ``watch``) when ``timeout`` passes or one of them exits."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        for process in watch:
            if process.popen.poll() is not None:
                raise RuntimeError(
                    f"{process.name} exited ({process.popen.returncode}) while waiting for {what}:\n{process.tail()}"
                )
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.name} ---\n{p.tail()}" for p in watch)
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}\n{logs}")
        time.sleep(interval)
