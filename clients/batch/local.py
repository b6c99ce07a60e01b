"""Jobs as detached processes on this machine, each with its state in a job directory.

``<data_dir>/jobs/<job_id>/`` holds everything a poller needs, so a worker that restarts (or a
different worker on the same machine) can find and poll a job it did not start::

    request.json   what was asked (command, output prefix, labels, task count)
    pid            process group id and its start time (to tell a reused pid apart)
    stdout, stderr the job's output streams (a multi-task job's stderr lines are prefixed [task k])
    exit_code      written by clients.batch.job_wrapper when the job (all its tasks) ended
    cancelled      written by cancel() before it kills the process group

and for a job of ``task_count`` N > 1, which the wrapper runs as N processes of the command (each
with ``BATCH_TASK_INDEX`` k and ``BATCH_TASK_COUNT`` N, at most ``parallelism`` at once, all in the
job's one process group, as Cloud Batch runs a job's tasks)::

    task_exit_codes.json   index -> exit code, rewritten as each task ends
    stderr-task<k>.txt     the tail of task k's stderr

A poller waits with ``wait_for_change``, which returns as soon as the job's process has ended (its
exit-code file appears, or its process group is gone) instead of sleeping out a poll interval.

A job is created in a hidden temporary directory and renamed into place: the rename is atomic and
fails if the id exists, so two submitters of one id start exactly one job. The job picks its own
device (``device: auto`` uses the GPU when torch sees one).

    runner = LocalProcessRunner(Path(".stackflows/jobs"))
    runner.submit(BatchJobRequest.for_stack_job(spec), "stack-1234")
    runner.status("stack-1234").state
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from clients.batch.base import (
    STDERR_TAIL_BYTES,
    BatchJobRequest,
    BatchRunner,
    JobNotFoundError,
    JobState,
    JobStatus,
    check_job_id,
    check_labels,
    read_progress,
    report_failed_tasks,
)
from clients.batch.job_wrapper import TASK_COUNT_ENV, TASK_INDEX_ENV, TASK_INDEX_FIELD

_KILL_GRACE_S = 5.0
# wait_for_change looks for the exit-code file and the wrapper's /proc entry this often (two cheap
# stat-like calls), and scans the process group at most every _GROUP_SCAN_S (it reads all of /proc).
_WATCH_S = 0.05
_GROUP_SCAN_S = 1.0
TASK_EXIT_CODES_FILE = "task_exit_codes.json"
TASK_STDERR_FILE = f"stderr-task{TASK_INDEX_FIELD}.txt"


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name, or None when there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return raw[raw.rindex(")") + 2 :].split()


def _start_ticks(pid: int) -> str | None:
    fields = _proc_stat(pid)
    return fields[19] if fields else None  # field 22 of stat: start time since boot


def _group_alive(pgid: int) -> bool:
    """True while any non-zombie process is left in the process group."""
    if not Path("/proc").is_dir():  # not Linux: ask the kernel directly (zombies count as alive)
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _proc_stat(int(entry.name))
            if fields and fields[0] != "Z" and fields[2] == str(pgid):
                return True
    return False


class LocalProcessRunner(BatchRunner):
    """Runs each job as ``python -m clients.batch.job_wrapper -- <command>`` in a new session."""

    def __init__(self, jobs_dir: Path, python: str | None = None) -> None:
        self.jobs_dir = Path(jobs_dir)
        self.python = python or sys.executable

    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / check_job_id(job_id)

    def submit(self, request: BatchJobRequest, job_id: str) -> str:
        final = self.job_dir(job_id)
        check_labels(request.labels)
        if final.exists():
            return job_id
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        pending = self.jobs_dir / f".pending-{job_id}-{uuid.uuid4().hex[:8]}"
        pending.mkdir()
        try:
            (pending / "request.json").write_text(request.model_dump_json(indent=2))
            process = self._start(request, pending)
            (pending / "pid").write_text(f"{process.pid} {_start_ticks(process.pid) or ''}")
            try:
                os.rename(pending, final)  # atomic; fails when another submitter won
            except OSError:
                if not final.exists():
                    raise
                self._kill_group(process.pid)
                return job_id
        finally:
            shutil.rmtree(pending, ignore_errors=True)
        return job_id

    def _start(self, request: BatchJobRequest, cwd: Path) -> subprocess.Popen[bytes]:
        # The wrapper runs in the job directory and writes `exit_code` there by a relative path, so
        # it lands in the right place even if the job ends before the directory is renamed.
        command = [self.python if request.command[0] == "python" else request.command[0], *request.command[1:]]
        wrapper = [sys.executable, "-m", "clients.batch.job_wrapper", "--exit-code-file", "exit_code"]
        env = {**os.environ, TASK_INDEX_ENV: "0", TASK_COUNT_ENV: "1"}  # as Batch sets them for a 1-task job
        if request.task_count > 1:  # the wrapper starts the tasks, each with its own BATCH_TASK_INDEX
            wrapper += ["--tasks", str(request.task_count), "--task-exit-codes-file", TASK_EXIT_CODES_FILE]
            wrapper += ["--stderr-tail-file", TASK_STDERR_FILE]
            wrapper += ["--parallelism", str(request.parallelism)] if request.parallelism else []
        with open(cwd / "stdout", "wb") as out, open(cwd / "stderr", "wb") as err:
            return subprocess.Popen(
                [*wrapper, "--", *command],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # own process group: survives the worker, killed as one on cancel
            )

    def _request(self, job_dir: Path) -> BatchJobRequest:
        return BatchJobRequest.model_validate_json((job_dir / "request.json").read_text())

    def _pid(self, job_dir: Path) -> tuple[int, str]:
        pid, _, ticks = (job_dir / "pid").read_text().partition(" ")
        return int(pid), ticks.strip()

    def _alive(self, job_dir: Path) -> bool:
        """The wrapper alive, or its children still running after it died."""
        return self._wrapper_alive(job_dir) or _group_alive(self._pid(job_dir)[0])

    def status(self, job_id: str) -> JobStatus:
        job_dir = self.job_dir(job_id)
        if not job_dir.is_dir():
            raise JobNotFoundError(f"no local job {job_id!r} in {self.jobs_dir}")
        request = self._request(job_dir)
        status = JobStatus(
            job_id=job_id,
            state=JobState.RUNNING,
            output_prefix=request.output_prefix,
            progress=read_progress(request.output_prefix),
            task_count=request.task_count,
        )
        exit_file = job_dir / "exit_code"
        alive = self._alive(job_dir)
        if request.task_count > 1:
            status.task_exit_codes = self._task_exit_codes(job_dir)
        if exit_file.exists():
            status.exit_code = int(exit_file.read_text())
            status.state = JobState.SUCCEEDED if status.exit_code == 0 else JobState.FAILED
            if request.task_count == 1:
                status.task_exit_codes = {0: status.exit_code}
        elif (job_dir / "cancelled").exists():
            status.state = JobState.CANCELLING if alive else JobState.CANCELLED
            status.message = "cancelled"
        elif not alive:
            status.state = JobState.FAILED
            status.message = "the job process ended without an exit code (killed, or the machine restarted)"
        if status.state is JobState.FAILED:
            status.stderr_tail = self._stderr_tail(job_dir)
            if request.task_count > 1 and exit_file.exists():
                report_failed_tasks(status, lambda k: self._task_stderr_tail(job_dir, k))
        return status

    @staticmethod
    def _task_exit_codes(job_dir: Path) -> dict[int, int | None]:
        try:
            return {int(k): v for k, v in json.loads((job_dir / TASK_EXIT_CODES_FILE).read_text()).items()}
        except FileNotFoundError:
            return {}

    @staticmethod
    def _task_stderr_tail(job_dir: Path, index: int) -> str:
        try:
            return (job_dir / TASK_STDERR_FILE.replace(TASK_INDEX_FIELD, str(index))).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_change(self, job_id: str, timeout_s: float) -> bool:
        """Return True as soon as the job's process has ended, False when ``timeout_s`` passed first."""
        job_dir = self.job_dir(job_id)
        if not job_dir.is_dir():
            raise JobNotFoundError(f"no local job {job_id!r} in {self.jobs_dir}")
        deadline = time.monotonic() + timeout_s
        next_scan = 0.0
        while True:
            if (job_dir / "exit_code").exists():
                return True
            now = time.monotonic()
            if not self._wrapper_alive(job_dir) and now >= next_scan:
                # the wrapper is gone without an exit code (killed): done once its group is gone too
                if not _group_alive(self._pid(job_dir)[0]):
                    return True
                next_scan = now + _GROUP_SCAN_S
            if now >= deadline:
                return False
            time.sleep(min(_WATCH_S, deadline - now))

    def _wrapper_alive(self, job_dir: Path) -> bool:
        """The job's wrapper process is running (not a zombie, not another process that reused its pid)."""
        pid, ticks = self._pid(job_dir)
        if not Path("/proc").is_dir():
            return _group_alive(pid)
        fields = _proc_stat(pid)
        return bool(fields) and fields[0] != "Z" and (not ticks or fields[19] == ticks)

    @staticmethod
    def _stderr_tail(job_dir: Path) -> str:
        with open(job_dir / "stderr", "rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - STDERR_TAIL_BYTES))
            return fh.read().decode(errors="replace")

    def cancel(self, job_id: str) -> None:
        job_dir = self.job_dir(job_id)
        if not job_dir.is_dir():
            raise JobNotFoundError(f"no local job {job_id!r} in {self.jobs_dir}")
        if (job_dir / "exit_code").exists():
            return  # already ended
        (job_dir / "cancelled").touch()
        self._kill_group(self._pid(job_dir)[0])

    @staticmethod
    def _kill_group(pgid: int) -> None:
        """SIGTERM the job's process group, SIGKILL what is left after a grace period."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + _KILL_GRACE_S
            while time.monotonic() < deadline:
                if not _group_alive(pgid):
                    return
                time.sleep(0.05)

    def find_jobs(self, labels: dict[str, str]) -> list[str]:
        if not self.jobs_dir.is_dir():
            return []
        found = []
        for job_dir in sorted(self.jobs_dir.iterdir()):
            if job_dir.name.startswith(".") or not (job_dir / "request.json").exists():
                continue
            if labels.items() <= self._request(job_dir).labels.items():
                found.append(job_dir.name)
        return found

    def logs_hint(self, job_id: str) -> str:
        job_dir = self.job_dir(job_id)
        hint = f"stdout and stderr of local job {job_id}: {job_dir / 'stdout'} and {job_dir / 'stderr'}"
        multi = (job_dir / "request.json").exists() and self._request(job_dir).task_count > 1
        return hint + (" (its tasks' stderr lines are prefixed [task k])" if multi else "")

