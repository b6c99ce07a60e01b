"""Long-running processes of the local stack (server, worker, API) for the demo and the end-to-end
tests: started with their output in a log file, waited on with a bounded deadline, stopped politely
and then firmly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
        """SIGINT (what Ctrl-C sends; workers and servers shut down cleanly), then SIGKILL; then whatever
        it started in sessions of its own (a worker's flow runs, their local GPU jobs) that outlived it."""
        below = descendants(self.popen.pid) if self.popen.poll() is None else []
        self._stop_group(timeout)
        stop_stragglers(below)

    def _stop_group(self, timeout: float) -> None:
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


# A process is (pid, start time in clock ticks since boot): a pid alone may be reused once it exits.
ProcessId = tuple[int, int]


def _stat(pid: int | str) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) from /proc/<pid>/stat; None when it is gone (or no /proc)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # the command name, in parentheses, may hold spaces
    return fields[0], int(fields[1]), int(fields[19])


def descendants(pid: int) -> list[ProcessId]:
    """Every live process below ``pid`` (Linux's /proc; empty elsewhere), children in their own
    sessions included, which a signal to ``pid``'s process group does not reach."""
    children: dict[int, list[ProcessId]] = {}
    for entry in Path("/proc").glob("[0-9]*") if Path("/proc").is_dir() else ():
        if (stat := _stat(entry.name)) is not None:
            children.setdefault(stat[1], []).append((int(entry.name), stat[2]))
    found: list[ProcessId] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def alive(process: ProcessId) -> bool:
    """Whether this very process still runs (not a later one that got its pid, nor a zombie)."""
    stat = _stat(process[0])
    return stat is not None and stat[2] == process[1] and stat[0] != "Z"


def stop_stragglers(processes: list[ProcessId], timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL, for those of ``processes`` still alive."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for process in processes:
            if alive(process):
                try:
                    os.kill(process[0], sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        while any(alive(p) for p in processes) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not any(alive(p) for p in processes):
            return


@contextmanager
def interrupted_by_signals() -> Iterator[None]:
    """SIGTERM and SIGINT raise KeyboardInterrupt, once, so the ``finally`` that stops the children runs.

    Python's default SIGTERM ends the process on the spot, and the children (each in a session of its
    own) would live on. Later signals are ignored until the block ends, so a second Ctrl-C cannot cut
    the stopping short.
    """
    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.getsignal(sig) for sig in handled}

    def interrupt(signum: int, _frame: object) -> None:
        for sig in handled:
            signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in handled:
        signal.signal(sig, interrupt)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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
