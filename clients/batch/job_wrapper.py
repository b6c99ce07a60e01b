"""Runs a job command and leaves behind what a poller needs once the process is gone.

Batch backends report *that* a job failed and its exit code, rarely *why*. This wrapper passes the
child's stderr through unchanged (so Cloud Logging and local log files still get all of it), keeps
its tail, and when the child exits writes

- ``--exit-code-file PATH``: the exit code, atomically (the local runner reads it), and/or
- ``--stderr-tail-uri URI``: the last 8 KiB of stderr, create-only, through clients.storage (the
  cloud runner reads it from beside the outputs).

    python -m clients.batch.job_wrapper --exit-code-file exit_code -- python -m inference.stack_job ...

It exits with the child's exit code (128 + N when the child died of signal N).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections import deque
from pathlib import Path

from clients.batch.base import STDERR_TAIL_BYTES


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m clients.batch.job_wrapper")
    parser.add_argument("--exit-code-file", type=Path, help="Write the exit code here when the job ends.")
    parser.add_argument("--stderr-tail-uri", help="Write the tail of stderr to this storage URI.")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the job's argv")
    args = parser.parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        parser.error("no job command given after --")
    return args


def _pump_stderr(child: subprocess.Popen[bytes]) -> bytes:
    """Copy the child's stderr to ours as it comes; return its last STDERR_TAIL_BYTES bytes."""
    tail: deque[bytes] = deque()
    kept = 0
    assert child.stderr is not None
    while chunk := child.stderr.read1(65536):
        sys.stderr.buffer.write(chunk)
        sys.stderr.buffer.flush()
        tail.append(chunk)
        kept += len(chunk)
        while kept - len(tail[0]) >= STDERR_TAIL_BYTES:
            kept -= len(tail.popleft())
    return b"".join(tail)[-STDERR_TAIL_BYTES:]


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    try:
        child = subprocess.Popen(args.command, stderr=subprocess.PIPE)
    except OSError as exc:  # e.g. the interpreter named in the command does not exist
        tail, code = f"cannot start {args.command[0]!r}: {exc}\n".encode(), 127
        sys.stderr.buffer.write(tail)
    else:
        tail = _pump_stderr(child)
        returncode = child.wait()
        code = 128 - returncode if returncode < 0 else returncode
    if args.stderr_tail_uri:
        try:
            from clients.storage import store_for

            store_for(args.stderr_tail_uri).put_bytes(tail, args.stderr_tail_uri)
        except Exception as exc:  # the job's own result matters more than its stderr copy
            print(f"job_wrapper: could not save stderr tail to {args.stderr_tail_uri}: {exc}", file=sys.stderr)
    if args.exit_code_file:
        _write_atomically(args.exit_code_file, str(code))
    return code


if __name__ == "__main__":
    sys.exit(main())
