"""Staging throughput against a plain upload, and the cost of staging the same file again.

    python -m benchmarks.staging [--size-mb 200] [--repeats 3]

Runs ``gcp-storage-emulator`` in this process on 127.0.0.1 and uploads one random file of
``--size-mb`` MB through the real google-cloud-storage client, alternating:

* baseline: ``bucket.blob(name).upload_from_filename(path)`` with the library's defaults
  (no precondition, its own crc32c, 100 MiB chunks);
* ours: ``put_content_addressed`` (what the ``stage-input`` task runs, minus Prefect's
  bookkeeping): sha256 + crc32c in one pass, an existence check at ``inputs/<sha256>/``, then a
  create-only resumable upload with the crc32c sent along and compared afterwards.

Both use 100 MiB chunks: the emulator rewrites the whole partial object on every chunk, so its
cost grows with (size / chunk) and unequal chunk sizes would measure the emulator, not us.
The emulator is wiped before each upload so each one really uploads. Medians are reported.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

CHUNK_MB = 100


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from gcp_storage_emulator.server import create_server

    port = _free_port()
    server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    work = Path(tempfile.mkdtemp(prefix="stackflows-bench-"))
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    os.environ["STACKFLOWS_STORAGE__CHUNK_SIZE_MB"] = str(CHUNK_MB)
    os.environ["STACKFLOWS_DATA_DIR"] = str(work / "data")

    from google.cloud import storage

    from clients.storage.content import put_content_addressed

    bucket_name, root = "bench", "gs://bench/root"
    client = storage.Client()
    source = work / "cells.h5ad"
    with open(source, "wb") as fh:
        for _ in range(args.size_mb):
            fh.write(os.urandom(1_000_000))
    size = source.stat().st_size

    def fresh_bucket() -> storage.Bucket:
        server.wipe()
        return client.create_bucket(bucket_name)

    plain_s, ours_s, restage_warm_s, restage_cold_s = [], [], [], []
    try:
        for i in range(args.repeats):
            # alternate which goes first, so drift in the machine's load hits both alike
            for which in ("plain", "ours") if i % 2 == 0 else ("ours", "plain"):
                bucket = fresh_bucket()
                t0 = time.perf_counter()
                if which == "plain":
                    bucket.blob(f"plain/{i}").upload_from_filename(str(source))
                    plain_s.append(time.perf_counter() - t0)
                else:
                    cache = work / f"digests-{i}"  # cold: the file has never been hashed here
                    first = put_content_addressed(source, root, digest_cache_dir=cache)
                    ours_s.append(time.perf_counter() - t0)
                    assert first.uploaded

                    t0 = time.perf_counter()
                    again = put_content_addressed(source, root, digest_cache_dir=cache)
                    restage_warm_s.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    cold = put_content_addressed(source, root, digest_cache_dir=None)
                    restage_cold_s.append(time.perf_counter() - t0)
                    assert not again.uploaded and not cold.uploaded
    finally:
        server.stop()

    plain, ours = statistics.median(plain_s), statistics.median(ours_s)
    warm, cold = statistics.median(restage_warm_s), statistics.median(restage_cold_s)
    mb = size / 1e6
    print(f"file: {mb:.0f} MB random bytes; gcp-storage-emulator in-process on 127.0.0.1; "
          f"{CHUNK_MB} MiB resumable chunks for both; median of {args.repeats}")
    print(f"plain upload_from_filename : {plain:6.2f} s  {mb / plain:7.1f} MB/s")
    print(f"stackflows staging         : {ours:6.2f} s  {mb / ours:7.1f} MB/s  "
          "(sha256+crc32c pass, exists check, create-only upload, crc32c compare)")
    print(f"staging/plain throughput ratio: {plain / ours:.2f}   (target >= 0.9)")
    print(f"re-stage identical file, digest cache warm : {warm * 1000:7.1f} ms = {warm / ours:.4f} of the first   (target <= 0.02)")
    print(f"re-stage identical file, digest cache cold : {cold * 1000:7.1f} ms = {cold / ours:.4f} of the first   "
          "(new machine: hashes the file, uploads nothing)")


if __name__ == "__main__":
    main()
