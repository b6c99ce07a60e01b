"""Stands in for ``python -m inference.stack_job`` in batch tests, writing the same files.

``STACKFLOWS_TEST_STANDIN`` picks the behaviour:

- ``succeed``: progress.json per chunk, predictions.h5ad and summary.json, then manifest.json with
  their sha256 (the job contract's files), exit 0;
- ``fail``: a traceback-like message on stderr, exit 3;
- ``hang``: progress.json saying it is generating, then block until killed;
- ``gated``: like ``hang`` until the file ``STACKFLOWS_TEST_GATE`` exists, then ``succeed``.

With ``--shards L`` it is one task of a sharded job, as the real job is: task k (``BATCH_TASK_INDEX``)
runs shard L[k] and writes that part's files under ``spec.shard_uri(L[k])`` (the manifest says which
shard). It also records itself under the output prefix, for tests about tasks: ``task-<k>.start.json``
(index, count, shard, pid, start time) when it starts and ``task-<k>.end.json`` when it returns
(times from CLOCK_MONOTONIC, which every process on the machine shares). ``STACKFLOWS_TEST_FAIL_TASK=k``
makes task k ``fail`` whatever the other tasks do.

Run as a script (``python tests/batch/standin_job.py --spec-json ...``); it imports only the contract
and the storage client, like the real job.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import time
from datetime import UTC, datetime

from clients.storage import local_path_of, store_for
from inference.contract import (
    MANIFEST_FILE,
    PREDICTIONS_FILE,
    PROGRESS_FILE,
    SUMMARY_FILE,
    JobManifest,
    JobProgress,
    PredictionSummary,
    ShardInfo,
    StackJobSpec,
)

CHUNKS = 3


def write_progress(spec: StackJobSpec, progress: JobProgress) -> None:
    """Overwrite progress.json atomically (temp + rename), as the real job does for file:// prefixes."""
    path = local_path_of(spec.output_uri(PROGRESS_FILE))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(progress.model_dump_json())
    os.replace(tmp, path)


def progress(phase: str, done: int) -> JobProgress:
    return JobProgress(
        phase=phase, chunks_done=done, chunks_total=CHUNKS, cells_done=done * 10, cells_total=CHUNKS * 10,
        updated_at=datetime.now(UTC),
    )


def succeed(spec: StackJobSpec, shard: ShardInfo | None = None) -> int:
    started = datetime.now(UTC)
    write_progress(spec, progress("loading", 0))
    for done in range(1, CHUNKS + 1):
        write_progress(spec, progress("generating", done))
    files = {
        PREDICTIONS_FILE: b"stand-in predictions for " + spec.content_hash().encode(),
        SUMMARY_FILE: PredictionSummary(mode=spec.mode, model_trained=False, query_cells=30, genes=5).model_dump_json().encode(),
    }
    for name, data in files.items():
        store_for(spec.output_uri(name)).put_bytes(data, spec.output_uri(name))
    manifest = JobManifest(
        spec=spec, model_trained=False, model_parameters=0, device="cpu", precision=spec.precision,
        timings_s={"total": 0.0}, peak_memory_mb=0.0,
        outputs={name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
        predictions_shape=(30, 5), started_at=started, finished_at=datetime.now(UTC), shard=shard,
    )
    store_for(spec.output_uri(MANIFEST_FILE)).put_bytes(manifest.model_dump_json().encode(), spec.output_uri(MANIFEST_FILE))
    write_progress(spec, progress("done", CHUNKS))
    return 0


def fail(spec: StackJobSpec) -> int:
    write_progress(spec, progress("loading", 0))
    print("Traceback (most recent call last):\nValueError: stand-in failure: gene list does not match", file=sys.stderr)
    return 3


def hang(spec: StackJobSpec) -> int:
    write_progress(spec, progress("generating", 1))
    signal.pause()  # until the runner kills us
    return 0


def gated(spec: StackJobSpec) -> int:
    write_progress(spec, progress("generating", 1))
    gate = os.environ["STACKFLOWS_TEST_GATE"]
    while not os.path.exists(gate):
        time.sleep(0.05)
    return succeed(spec)


BEHAVIOURS = {"succeed": succeed, "fail": fail, "hang": hang, "gated": gated}


def record(spec: StackJobSpec, name: str, fields: dict) -> None:
    """A small JSON file directly under the job's output prefix (tests read them; no job contract file)."""
    path = local_path_of(spec.output_uri(name))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**fields, "t_ns": time.monotonic_ns()}))


def run_task(spec: StackJobSpec, shards: list[int]) -> int:
    """One task of a sharded job: shard ``shards[BATCH_TASK_INDEX]``, its part under spec.shard_uri."""
    index, count = int(os.environ["BATCH_TASK_INDEX"]), int(os.environ.get("BATCH_TASK_COUNT", "1"))
    shard = shards[index]
    record(spec, f"task-{index}.start.json", {"index": index, "count": count, "shard": shard, "pid": os.getpid()})
    part = spec.model_copy(update={"output_prefix": spec.shard_uri(shard)})
    if store_for(part.output_prefix).list(part.output_prefix):
        print(f"shard {shard}'s part {part.output_prefix} already holds objects", file=sys.stderr)
        return 2
    behaviour = os.environ.get("STACKFLOWS_TEST_STANDIN", "succeed")
    if os.environ.get("STACKFLOWS_TEST_FAIL_TASK") == str(index):
        behaviour = "fail"
    info = ShardInfo(index=shard, count=spec.shard_count, query_cells=(0, 30))
    code = succeed(part, info) if behaviour == "succeed" else BEHAVIOURS[behaviour](part)
    record(spec, f"task-{index}.end.json", {"index": index, "exit_code": code})
    return code


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec-json", required=True)
    parser.add_argument("--shards", help="comma-separated shard indexes: task k runs the k-th")
    args = parser.parse_args()
    spec = StackJobSpec.model_validate_json(args.spec_json)
    if args.shards is not None:
        return run_task(spec, [int(i) for i in args.shards.split(",")])
    if store_for(spec.output_prefix).list(spec.output_prefix):  # like the real job: never a used location
        print(f"output_prefix {spec.output_prefix} already holds objects; pick a new output_prefix", file=sys.stderr)
        return 2
    behaviour = os.environ.get("STACKFLOWS_TEST_STANDIN", "succeed")
    return BEHAVIOURS[behaviour](spec)


if __name__ == "__main__":
    sys.exit(main())
