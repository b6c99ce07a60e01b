"""Staging throughput against a plain upload, and the cost of staging the same file again.

    python -m benchmarks.staging [--size-mb 200] [--repeats 5]

Runs ``gcp-storage-emulator`` in this process on 127.0.0.1 and uploads one h5ad of about
``--size-mb`` MB (dense float32 counts) through the real google-cloud-storage client:

* baseline: ``bucket.blob(name).upload_from_filename(path)`` with the library's defaults
  (no precondition, its own crc32c, 100 MiB chunks);
* staging: ``put_content_addressed`` on a file nobody has hashed yet (how model files are staged):
  the file read into upload-sized chunks while a second thread hashes it (``read_ahead``), an
  existence check at ``inputs/<sha256>/``, then a create-only resumable upload of the held chunks
  with the crc32c sent along and compared afterwards;
* in the flow: ``validate-input`` computes the hash on a second thread beside its matrix scan
  (``validate_with_digest``), so ``stage-input`` finds it in the digest cache and only checks and
  uploads. Compared with validating (``validate_h5ad``) and then uploading plainly.

Both uploads use 100 MiB chunks: the emulator rewrites the whole partial object on every chunk, so
its cost grows with (size / chunk) and unequal chunk sizes would measure the emulator, not us.
The emulator is wiped before each upload so each one really uploads. Runs alternate which goes
first; medians are printed, with the best run in brackets (this machine is shared).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from deployments.processes import free_port

CHUNK_MB = 100
N_VARS = 2000


def _write_counts_h5ad(path: Path, size_mb: int) -> None:
    import anndata as ad
    import numpy as np
    import pandas as pd

    n_obs = size_mb * 1_000_000 // (4 * N_VARS)
    x = np.random.default_rng(0).poisson(1.0, size=(n_obs, N_VARS)).astype(np.float32)
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical(np.array(["B", "T", "NK", "Mono"])[np.arange(n_obs) % 4])},
        index=[f"c{i}" for i in range(n_obs)],
    )
    ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=[f"G{i}" for i in range(N_VARS)])).write_h5ad(path)


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from gcp_storage_emulator.server import create_server

    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    work = Path(tempfile.mkdtemp(prefix="stackflows-bench-"))
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    os.environ["STACKFLOWS_STORAGE__CHUNK_SIZE_MB"] = str(CHUNK_MB)
    os.environ["STACKFLOWS_DATA_DIR"] = str(work / "data")

    from google.cloud import storage

    from clients.storage.content import put_content_addressed
    from tasks.validation import validate_h5ad
    from tasks.staging import validate_with_digest

    root = "gs://bench/root"
    client = storage.Client()
    source = work / "cells.h5ad"
    _write_counts_h5ad(source, args.size_mb)
    mb = source.stat().st_size / 1e6

    def fresh_bucket() -> storage.Bucket:
        server.wipe()
        return client.create_bucket("bench")

    t: dict[str, list[float]] = {
        k: [] for k in ("plain", "validate", "stage", "warm", "cold", "validate+hash", "stage_hashed")
    }
    try:
        for i in range(args.repeats):
            order = ("plain", "stage", "flow") if i % 2 == 0 else ("flow", "stage", "plain")
            for which in order:
                bucket = fresh_bucket()
                if which == "plain":
                    t["validate"].append(_timed(lambda: validate_h5ad(source)))
                    t["plain"].append(_timed(lambda: bucket.blob("plain").upload_from_filename(str(source))))
                elif which == "stage":
                    cache = work / f"digests-stage-{i}"  # cold: never hashed here
                    t["stage"].append(_timed(lambda: put_content_addressed(source, root, digest_cache_dir=cache)))
                    # the same file again: same machine (digest cache), then a new machine (no cache)
                    t["warm"].append(_timed(lambda: put_content_addressed(source, root, digest_cache_dir=cache)))
                    t["cold"].append(_timed(lambda: put_content_addressed(source, root, digest_cache_dir=None)))
                else:
                    cache = work / f"digests-flow-{i}"
                    t["validate+hash"].append(_timed(lambda: validate_with_digest(source, cache)))
                    t["stage_hashed"].append(
                        _timed(lambda: put_content_addressed(source, root, digest_cache_dir=cache))
                    )
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in t.items()}
    best = {k: min(v) for k, v in t.items()}

    def line(label: str, key: str, note: str = "") -> None:
        print(f"  {label:<44} {med[key]:6.2f} s ({best[key]:.2f})  {mb / med[key]:6.1f} MB/s  {note}")

    print(
        f"{mb:.0f} MB h5ad (dense float32 counts); gcp-storage-emulator in-process on 127.0.0.1; "
        f"{CHUNK_MB} MiB chunks for both uploads; {args.repeats} alternating runs; median (best)"
    )
    line("plain blob.upload_from_filename", "plain")
    line(
        "staging from scratch (hash + upload)",
        "stage",
        "hash while reading ahead, exists check, create-only upload, crc32c compare",
    )
    print(
        f"staging-from-scratch/plain throughput ratio: {med['plain'] / med['stage']:.2f} "
        f"(best vs best {best['plain'] / best['stage']:.2f})   target >= 0.9"
    )
    print(
        f"re-stage identical file, same machine (digest cache): {med['warm'] * 1000:6.1f} ms = "
        f"{med['warm'] / med['stage']:.4f} of the first   target <= 0.02"
    )
    print(
        f"re-stage identical file, new machine (hashes again):  {med['cold'] * 1000:6.1f} ms = "
        f"{med['cold'] / med['stage']:.4f} of the first   (uploads nothing either way)"
    )
    print("in the flow, validation first (stackflows validates every input before it stages it):")
    line("validate_h5ad", "validate")
    line("validate-input (validation + hash beside it)", "validate+hash")
    line("stage-input (hash from validate-input)", "stage_hashed", "exists check, create-only upload, crc32c compare")
    base, ours = med["validate"] + med["plain"], med["validate+hash"] + med["stage_hashed"]
    base_b, ours_b = best["validate"] + best["plain"], best["validate+hash"] + best["stage_hashed"]
    print(
        f"(validate + plain upload) / (validate-input + stage-input) throughput ratio: {base / ours:.2f} "
        f"(best vs best {base_b / ours_b:.2f})   target >= 0.9"
    )
    print(f"machine load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
