"""The matrices: where the counts are (``raw.X``, ``X``, ``layers["counts"]``), their scan in blocks
from disk, and the refusal of values that are not counts."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
from anndata.io import sparse_dataset

from tasks.validation.errors import InputValidationError, failures_reported, plural
from tasks.validation.facts import CountsLocation, MatrixStats

# Values scanned per block: 8M values is 32-64 MB whatever the matrix's shape.
BLOCK_VALUES = 8 * 1024 * 1024
# The layer scanpy users keep counts in before normalising X (adata.layers["counts"] = adata.X.copy()).
COUNTS_LAYER = "counts"
_COUNTS_PLACES = '.X, .raw.X or .layers["counts"]'  # for messages: where STACK looks for counts


def find_counts(
    path: Path, adata: ad.AnnData, block_values: int
) -> tuple[CountsLocation, dict[CountsLocation, MatrixStats], CountsLocation | None]:
    """Scan the candidate matrices in order until one holds counts.

    Returns the matrix to use (the counts, else the first candidate), every scan made, and where the
    counts are (None when no candidate holds them).
    """
    with reading(path, "the matrices (.X, .raw.X, .layers)"):
        candidates = _matrices(adata)
    if not candidates:
        raise InputValidationError(
            path, "neither .X nor .raw.X holds a matrix", f"store the raw counts in {_COUNTS_PLACES}"
        )
    stats: dict[CountsLocation, MatrixStats] = {}
    for loc, matrix in candidates.items():
        with reading(path, where_written(loc)):
            stats[loc] = _scan(loc, matrix, block_values)
        if stats[loc].is_counts:
            return loc, stats, loc
    return next(iter(stats)), stats, None  # raw.X first when it exists


def where_written(location: CountsLocation) -> str:
    """How a user writes the location in Python: .raw.X, .X, .layers["counts"]."""
    if location.startswith("layers/"):
        return f'.layers["{location.removeprefix("layers/")}"]'
    return f".{location}"


def reading(path: Path, what: str) -> AbstractContextManager[None]:
    """Reads of an opened file's matrices: damage HDF5 finds only now (a bad attribute, a data
    address past the end) becomes an InputValidationError instead of h5py's RuntimeError/OSError."""
    return failures_reported(
        path,
        f"{what} cannot be read, the file is damaged",
        "copy or download the file again; if it persists, re-write it with adata.write_h5ad(path)",
    )


def _matrices(adata: ad.AnnData) -> dict[CountsLocation, object]:
    """The matrices counts may be in, raw.X first (where scanpy keeps counts once X is normalised),
    then X, then layers["counts"]; each as stored on disk, so a scan reads it in blocks."""
    found: dict[CountsLocation, object] = {}
    if adata.raw is not None and adata.raw.X is not None:
        found["raw.X"] = adata.raw.X
    # a backed AnnData saved with X=None has no X in its file, and reading adata.X raises KeyError
    has_x = "X" in adata.file if adata.isbacked else True
    if has_x and adata.X is not None:
        found["X"] = adata.X
    layer = _stored_layer(adata, COUNTS_LAYER)
    if layer is not None:
        found[f"layers/{COUNTS_LAYER}"] = layer
    return found


def _stored_layer(adata: ad.AnnData, name: str) -> object | None:
    """The layer as the file stores it (a backed sparse dataset, or an h5py dataset), not in memory."""
    if not adata.isbacked:
        return None
    layers = adata.file["layers"] if "layers" in adata.file else None
    if layers is None or name not in layers:
        return None
    element = layers[name]
    return sparse_dataset(element) if isinstance(element, h5py.Group) else element


def other_layers(adata: ad.AnnData) -> list[str]:
    return [str(k) for k in adata.layers.keys() if k != COUNTS_LAYER]


def _blocks(matrix, block_values: int) -> Iterator[np.ndarray]:
    """The stored values of a backed matrix in blocks of about ``block_values``."""
    group = getattr(matrix, "group", None)
    if group is not None:  # backed sparse (CSR/CSC): the non-zero values are all that can be wrong
        data = group["data"]
        for start in range(0, data.shape[0], block_values):
            yield np.asarray(data[start : start + block_values])
        return
    n_rows, n_cols = matrix.shape  # backed dense: an h5py dataset, read a block of rows at a time
    step = max(1, block_values // max(1, n_cols))
    for start in range(0, n_rows, step):
        yield np.asarray(matrix[start : start + step])


def _scan(location: CountsLocation, matrix, block_values: int) -> MatrixStats:
    sparse = getattr(matrix, "group", None) is not None
    stats = MatrixStats(location=location, sparse=sparse, dtype=str(matrix.dtype), n_values_scanned=0)
    integer_dtype = np.issubdtype(matrix.dtype, np.integer) or np.issubdtype(matrix.dtype, np.bool_)
    for block in _blocks(matrix, block_values):
        block = block.ravel()
        stats.n_values_scanned += block.size
        if block.size == 0:
            continue
        if integer_dtype:
            finite = block
        else:
            ok = np.isfinite(block)
            stats.n_nonfinite += int(block.size - np.count_nonzero(ok))
            finite = block[ok] if stats.n_nonfinite else block
            stats.n_noninteger += int(np.count_nonzero(finite != np.floor(finite)))
        stats.n_negative += int(np.count_nonzero(finite < 0))
        if finite.size:
            peak = float(finite.max())
            stats.max_value = peak if stats.max_value is None else max(stats.max_value, peak)
    return stats


def reject_bad_values(
    path: Path, used: MatrixStats, need_counts: bool, all_stats: dict, other_layers: Sequence[str] = ()
) -> None:
    where = where_written(used.location)
    if used.n_nonfinite:
        raise InputValidationError(
            path,
            f"{where} has {plural(used.n_nonfinite, 'non-finite value')} (NaN or infinity)",
            "replace them (e.g. X[~np.isfinite(X)] = 0) or re-export the raw counts",
        )
    if used.n_negative:
        raise InputValidationError(
            path,
            f"{where} has {plural(used.n_negative, 'negative value')}, so it is not expression counts (scaled or centred data?)",
            f"store the raw counts in {_COUNTS_PLACES}",
        )
    if need_counts:
        looked = _and(where_written(s.location) for s in all_stats.values())
        verb = "hold" if len(all_stats) > 1 else "holds"
        fix = (
            "keep the raw counts (e.g. adata.raw = adata, or adata.layers['counts'] = adata.X.copy(), before "
            "sc.pp.normalize_total/log1p), or pass counts_required=False if the model expects normalised values"
        )
        if other_layers:
            first = other_layers[0]
            fix = (
                f"if one of its layers ({', '.join(map(repr, other_layers[:10]))}) holds the raw counts, store it "
                f"as layers['counts'] (adata.layers['counts'] = adata.layers[{first!r}]); else {fix}"
            )
        raise InputValidationError(
            path,
            f"{looked} {verb} no raw counts: {plural(used.n_noninteger, 'value')} in {where} are not whole numbers "
            f"(max {used.max_value:.4g}; log-normalised data?). STACK needs raw counts in {_COUNTS_PLACES}",
            fix,
        )


def _and(items: Iterable[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]

