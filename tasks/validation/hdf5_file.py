"""The file itself: that it is a readable HDF5 AnnData file (not a directory, empty, gzip-compressed,
plain HDF5 or damaged), checked by a child process that reads its metadata, and its backed open."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anndata as ad
import h5py

from tasks.validation.errors import InputValidationError, failures_reported

# Seconds the HDF5 metadata probe may take (a healthy file's takes well under a second per GB of obs/var).
METADATA_TIMEOUT_S = 120.0
GZIP_MAGIC = b"\x1f\x8b"


# Run in a child process (h5py only): walks every object, reads every attribute and every string or
# variable-length dataset -- all that lives in HDF5's global heap, where libhdf5 loops forever on some
# damaged files (h5py#2088, HDFGroup/hdf5#1707) -- and prints the top-level keys or the error as JSON.
_METADATA_PROBE = '''
import json, sys
import h5py

def touch(name, obj):
    for key in obj.attrs:
        obj.attrs[key]
    if isinstance(obj, h5py.Dataset) and (
        h5py.check_string_dtype(obj.dtype) or h5py.check_vlen_dtype(obj.dtype) or obj.dtype.kind == "O"
    ):
        obj[()]

try:
    with h5py.File(sys.argv[1], "r") as f:
        keys = sorted(f.keys())
        touch("/", f)
        f.visititems(touch)
    print(json.dumps({"keys": keys}))
except Exception as exc:
    print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
'''


def check_readable_hdf5(path: Path, timeout_s: float = METADATA_TIMEOUT_S) -> None:
    if path.is_dir():
        raise _directory_error(path)
    if not path.is_file():
        raise InputValidationError(path, "file not found", "check the path or URI; it must name an .h5ad file")
    if path.stat().st_size == 0:
        raise InputValidationError(
            path, "the file is empty (0 bytes)", "the download or copy failed; copy the file again"
        )
    with path.open("rb") as head:
        gzipped = head.read(len(GZIP_MAGIC)) == GZIP_MAGIC
    if gzipped:
        raise InputValidationError(
            path,
            "the file is gzip-compressed (it starts with gzip's bytes 1f 8b), so it is not an .h5ad as it is",
            f"decompress it first ({_gunzip_command(path)}) and pass the decompressed .h5ad",
        )
    if not h5py.is_hdf5(path):
        raise InputValidationError(
            path,
            "not an HDF5 file, so not an .h5ad",
            "save the data with AnnData's write_h5ad (loom, csv, mtx must be converted first)",
        )
    keys = set(_probe_metadata(path, timeout_s))
    if not {"obs", "var"} <= keys:
        raise InputValidationError(
            path,
            f"an HDF5 file but not AnnData: it has no obs/var groups (top-level keys: {sorted(keys) or 'none'})",
            "write the data with anndata (adata.write_h5ad(path))",
        )


def _directory_error(path: Path) -> InputValidationError:
    """A directory where a file was expected: a zarr store (AnnData's other format) or a folder of files."""
    zarr_markers = (".zgroup", ".zattrs", "zarr.json")
    if path.suffix == ".zarr" or any((path / marker).exists() for marker in zarr_markers):
        return InputValidationError(
            path,
            "a directory, not a file: it looks like a zarr store (AnnData's other on-disk format), not an .h5ad",
            f"convert it with anndata: anndata.read_zarr({str(path)!r}).write_h5ad({path.stem + '.h5ad'!r}), "
            "and pass the .h5ad",
        )
    inside = sorted(p.name for p in path.glob("*.h5ad"))
    fix = "name the .h5ad file itself, not the directory that holds it"
    if inside:
        fix += f" (it holds {', '.join(inside[:5])}{', ...' if len(inside) > 5 else ''})"
    return InputValidationError(path, "a directory, not a file", fix)


def _gunzip_command(path: Path) -> str:
    if path.suffix == ".gz":
        return f"gunzip -k {path.name}"
    return f"gunzip -c {path.name} > {path.stem}.decompressed.h5ad"


def _probe_metadata(path: Path, timeout_s: float) -> list[str]:
    """The file's top-level keys, once a child process has read all its metadata.

    A child, because damaged files can make libhdf5 loop forever or crash, and neither can be
    interrupted inside this process; the child is killed after ``timeout_s``.
    """
    damaged = "the copy is incomplete or damaged: copy or download the file again"
    try:
        done = subprocess.run(
            [sys.executable, "-c", _METADATA_PROBE, str(path)],
            capture_output=True, text=True, timeout=timeout_s, check=False,
        )
    except subprocess.TimeoutExpired:
        raise InputValidationError(
            path,
            f"reading its HDF5 metadata did not finish within {timeout_s:g} s, so the file is corrupt "
            "(libhdf5 loops on some damaged files)",
            damaged,
        ) from None
    try:
        answer = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        answer = {}
    if "keys" in answer:
        return answer["keys"]
    if "error" in answer:
        raise InputValidationError(path, f"the HDF5 file is truncated or corrupt ({answer['error']})", damaged)
    if done.returncode < 0:
        raise InputValidationError(
            path, f"the HDF5 file is corrupt: libhdf5 crashed reading it (signal {-done.returncode})", damaged
        )
    last = (done.stderr.strip().splitlines() or ["no output"])[-1]  # not the file's fault: h5py missing...
    raise RuntimeError(f"the HDF5 metadata probe did not run (exit status {done.returncode}: {last})")


def open_backed(path: Path) -> ad.AnnData:
    rewrite = "re-write it with a current anndata (adata.write_h5ad(path))"
    with failures_reported(path, "AnnData cannot read it", rewrite):  # anndata raises many kinds
        return ad.read_h5ad(path, backed="r")
