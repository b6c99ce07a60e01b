"""Runs a job command and leaves behind what a poller needs once the process is gone.

Batch backends report *that* a job failed and its exit code, rarely *why*. This wrapper passes the
child's stderr through unchanged (so Cloud Logging and local log files still get all of it), keeps
its tail, and when the child exits writes

- ``--exit-code-file PATH``: the exit code, atomically (the local runner reads it), and/or
- ``--stderr-tail-uri URI``: the last 8 KiB of stderr, create-only, through clients.storage (the
  cloud runner reads it from beside the outputs), and/or
- ``--stderr-tail-file PATH``: the same tail into a local file, atomically.

    python -m clients.batch.job_wrapper --exit-code-file exit_code -- python -m inference.stack_job ...

``{task_index}`` in a tail URI or file is this task's ``BATCH_TASK_INDEX`` (0 when unset): every task
of a multi-task Cloud Batch job runs its own wrapper, and each must keep its own tail.

``--tasks N`` (the local runner's multi-task jobs) plays what Cloud Batch does for ``task_count``:
it runs N copies of the command, each with ``BATCH_TASK_INDEX=k`` and ``BATCH_TASK_COUNT=N``, at most
``--parallelism`` at once, all in the wrapper's process group (one kill stops them all). Each child's
stderr lines reach ours prefixed ``[task k]``; its tail goes to the tail file/URI named for it, and
``--task-exit-codes-file`` (JSON, index -> code) grows as each task ends. The exit-code file is
written once all ended: 0 if every task succeeded, else the code of the lowest-numbered failed task.

It exits with the job's exit code (128 + N when the child died of signal N).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path
from typing import BinaryIO

from clients.batch.base import STDERR_TAIL_BYTES
from inference.contract import TASK_INDEX_ENV

# TASK_INDEX_ENV (BATCH_TASK_INDEX) and this are what Cloud Batch sets in each task's environment.
TASK_COUNT_ENV = "BATCH_TASK_COUNT"
TASK_INDEX_FIELD = "{task_index}"


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m clients.batch.job_wrapper")
    parser.add_argument("--exit-code-file", type=Path, help="Write the exit code here when the job ends.")
    parser.add_argument("--stderr-tail-uri", help="Write the tail of stderr to this storage URI ({task_index}).")
    parser.add_argument("--stderr-tail-file", help="Write the tail of stderr to this local file ({task_index}).")
    parser.add_argument("--tasks", type=int, default=1, help="Run this many tasks (BATCH_TASK_INDEX=0..N-1).")
    parser.add_argument("--parallelism", type=int, default=None, help="At most this many tasks at once (default: all).")
    parser.add_argument("--task-exit-codes-file", type=Path, help="With --tasks: each ended task's exit code (JSON).")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the job's argv")
    args = parser.parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        parser.error("no job command given after --")
    if args.tasks < 1 or (args.parallelism is not None and args.parallelism < 1):
        parser.error(f"--tasks ({args.tasks}) and --parallelism ({args.parallelism}) must be at least 1")
    return args


def _pump_stderr(child: subprocess.Popen[bytes]) -> bytes:
    """Copy the child's stderr to ours as it comes; return its last STDERR_TAIL_BYTES bytes."""
    tail = _Tail()
    assert child.stderr is not None
    while chunk := child.stderr.read1(65536):
        sys.stderr.buffer.write(chunk)
        sys.stderr.buffer.flush()
        tail.add(chunk)
    return tail.bytes()


def _pump_prefixed(stream: BinaryIO, prefix: bytes, lock: threading.Lock) -> bytes:
    """Copy one task's stderr to ours line by line, each line prefixed (tasks interleave); return its tail."""
    tail = _Tail()
    for line in iter(stream.readline, b""):
        with lock:
            sys.stderr.buffer.write(prefix + line + (b"" if line.endswith(b"\n") else b"\n"))
            sys.stderr.buffer.flush()
        tail.add(line)
    return tail.bytes()


class _Tail:
    """The last STDERR_TAIL_BYTES bytes of a stream, kept as pieces without holding the rest."""

    def __init__(self) -> None:
        self.pieces: deque[bytes] = deque()
        self.kept = 0

    def add(self, piece: bytes) -> None:
        self.pieces.append(piece)
        self.kept += len(piece)
        while self.kept - len(self.pieces[0]) >= STDERR_TAIL_BYTES:
            self.kept -= len(self.pieces.popleft())

    def bytes(self) -> bytes:
        return b"".join(self.pieces)[-STDERR_TAIL_BYTES:]


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def _save_tail(args: argparse.Namespace, tail: bytes, task_index: str) -> None:
    if args.stderr_tail_file:
        path = Path(args.stderr_tail_file.replace(TASK_INDEX_FIELD, task_index))
        _write_atomically(path, tail.decode(errors="replace"))
    if args.stderr_tail_uri:
        uri = args.stderr_tail_uri.replace(TASK_INDEX_FIELD, task_index)
        try:
            from clients.storage import store_for

            store_for(uri).put_bytes(tail, uri)
        except Exception as exc:  # noqa: BLE001 (the job's own result matters more than its stderr copy)
            print(f"job_wrapper: could not save stderr tail to {uri}: {exc}", file=sys.stderr)


def _run_one(args: argparse.Namespace) -> int:
    """The command once, as this process's task (Cloud Batch's task, or a local 1-task job)."""
    try:
        child = subprocess.Popen(args.command, stderr=subprocess.PIPE)
    except OSError as exc:  # e.g. the interpreter named in the command does not exist
        tail, code = f"cannot start {args.command[0]!r}: {exc}\n".encode(), 127
        sys.stderr.buffer.write(tail)
    else:
        tail = _pump_stderr(child)
        code = _exit_code(child.wait())
    _save_tail(args, tail, os.environ.get(TASK_INDEX_ENV, "0"))
    return code


def _run_tasks(args: argparse.Namespace) -> int:
    """``--tasks`` copies of the command, at most ``--parallelism`` at once; the job's exit code."""
    count = args.tasks
    parallelism = min(args.parallelism or count, count)
    ended: queue.Queue[tuple[int, int]] = queue.Queue()
    lock = threading.Lock()

    def run(index: int) -> None:
        env = {**os.environ, TASK_INDEX_ENV: str(index), TASK_COUNT_ENV: str(count)}
        try:
            child = subprocess.Popen(args.command, stderr=subprocess.PIPE, env=env)
        except OSError as exc:
            tail, code = f"cannot start {args.command[0]!r}: {exc}\n".encode(), 127
            with lock:
                sys.stderr.buffer.write(f"[task {index}] ".encode() + tail)
        else:
            assert child.stderr is not None
            tail = _pump_prefixed(child.stderr, f"[task {index}] ".encode(), lock)
            code = _exit_code(child.wait())
        _save_tail(args, tail, str(index))
        ended.put((index, code))

    codes: dict[int, int] = {}
    started = 0
    while len(codes) < count:
        while started < count and started - len(codes) < parallelism:
            threading.Thread(target=run, args=(started,), daemon=True).start()
            started += 1
        index, code = ended.get()
        codes[index] = code
        if args.task_exit_codes_file:
            _write_atomically(args.task_exit_codes_file, json.dumps({str(k): codes[k] for k in sorted(codes)}))
    failed = [codes[k] for k in sorted(codes) if codes[k] != 0]
    return failed[0] if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    code = _run_tasks(args) if args.tasks > 1 else _run_one(args)
    if args.exit_code_file:
        _write_atomically(args.exit_code_file, str(code))
    return code


if __name__ == "__main__":
    sys.exit(main())
