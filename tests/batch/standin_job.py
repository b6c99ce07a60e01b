"""Stands in for ``python -m inference.stack_job`` in batch tests, writing the same files.

``STACKFLOWS_TEST_STANDIN`` picks the behaviour:

- ``succeed``: progress.json per chunk, predictions.h5ad and summary.json, then manifest.json with
  their sha256 (the job contract's files), exit 0;
- ``fail``: a traceback-like message on stderr, exit 3;
- ``hang``: progress.json saying it is generating, then block until killed;
- ``gated``: like ``hang`` until the file ``STACKFLOWS_TEST_GATE`` exists, then ``succeed``.

Run as a script (``python tests/batch/standin_job.py --spec-json ...``); it imports only the contract
and the storage client, like the real job.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import sys
import time
from datetime import datetime, timezone

from clients.storage import local_path_of, store_for
from inference.contract import (
    MANIFEST_FILE,
    PREDICTIONS_FILE,
    PROGRESS_FILE,
    SUMMARY_FILE,
    JobManifest,
    JobProgress,
    PredictionSummary,
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
        updated_at=datetime.now(timezone.utc),
    )


def succeed(spec: StackJobSpec) -> int:
    started = datetime.now(timezone.utc)
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
        predictions_shape=(30, 5), started_at=started, finished_at=datetime.now(timezone.utc),
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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec-json", required=True)
    spec = StackJobSpec.model_validate_json(parser.parse_args().spec_json)
    if store_for(spec.output_prefix).list(spec.output_prefix):  # like the real job: never a used location
        print(f"output_prefix {spec.output_prefix} already holds objects; pick a new output_prefix", file=sys.stderr)
        return 2
    behaviour = os.environ.get("STACKFLOWS_TEST_STANDIN", "succeed")
    return {"succeed": succeed, "fail": fail, "hang": hang, "gated": gated}[behaviour](spec)


if __name__ == "__main__":
    sys.exit(main())
