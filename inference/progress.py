"""``progress.json``: the one output the job rewrites while it runs.

Every other output goes through the object store, which is create-only. Progress must be replaced
as chunks finish, so it has its own writer, used for that file alone:

- ``file://`` (and plain paths): the JSON goes to a hidden temporary file beside the target, then
  ``os.replace`` swaps it in. Readers (the flow polling the file) see the old or the new version,
  never a partial one. Hidden files are not listed by the local store.
- ``gs://``: one single-request upload of the whole object without a generation precondition;
  GCS replaces objects atomically, so readers again see a whole version. GCS allows about one
  write per second to one object, so chunk updates are written at most every
  ``GCS_MIN_INTERVAL_S`` (phase changes always are).
"""

from __future__ import annotations

import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from clients.storage import local_path_of, scheme_of, split_gs_uri, store_for
from inference.contract import PROGRESS_FILE, JobProgress, StackJobSpec


GCS_MIN_INTERVAL_S = 2.0


class ProgressWriter:
    """Rewrites ``<output_prefix>/progress.json`` atomically; remembers the last state written."""

    def __init__(self, spec: StackJobSpec) -> None:
        self.uri = spec.output_uri(PROGRESS_FILE)
        self.last: JobProgress | None = None
        self.min_interval_s = GCS_MIN_INTERVAL_S if scheme_of(self.uri) == "gs" else 0.0
        self._written_at = float("-inf")

    def update(self, phase: str, *, force: bool = False, **fields) -> JobProgress:
        """Merge ``fields`` into the last state and write it (throttled unless forced or a new phase)."""
        base = self.last.model_dump() if self.last is not None else {}
        base.update(fields, phase=phase, updated_at=datetime.now(UTC))
        progress = JobProgress(**base)
        new_phase = self.last is None or self.last.phase != phase
        self.last = progress
        if force or new_phase or time.monotonic() - self._written_at >= self.min_interval_s:
            self._write(progress.model_dump_json(indent=2).encode())
            self._written_at = time.monotonic()
        return progress

    def _write(self, data: bytes) -> None:
        if scheme_of(self.uri) == "file":
            _replace_local(local_path_of(self.uri), data)
        elif scheme_of(self.uri) == "gs":
            store = store_for(self.uri)
            bucket, key = split_gs_uri(self.uri)
            blob = store.client.bucket(bucket).blob(key)
            blob.upload_from_string(data, content_type="application/json", retry=store.retry)
        else:
            raise ValueError(f"{self.uri}: progress can be written to file:// or gs:// only")


def _replace_local(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
