"""Checks an h5ad file before anything is uploaded or any GPU is paid for, and reports its facts.

Pure functions (no Prefect): ``validate_h5ad(path, ...)`` returns a :class:`DatasetFacts` or raises
:class:`InputValidationError`, whose message names the file, the problem and the fix.

First a child process reads the file's HDF5 metadata (every attribute and string dataset) under a
timeout: libhdf5 can loop forever or crash on some damaged files, which no code in this process
could interrupt. Then the file is opened in AnnData's backed mode: ``obs`` and ``var`` are read, the
matrices stay on disk and are scanned in blocks (rows of a dense matrix, the stored values of a
sparse one), so a file larger than memory is checked in constant memory. Whatever a damaged file
makes h5py or anndata raise is reported as an InputValidationError.

The counts are looked for in ``raw.X``, then ``X``, then ``layers["counts"]`` (scanpy's habit); the
first that holds whole numbers is the matrix STACK reads (``DatasetFacts.matrix_used``), and the
job spec names it so the GPU job reads exactly that one. Gene names are matched as the job matches
them (:mod:`inference.data`): var_names, or a ``gene_name_column`` such as CELLxGENE's feature_name.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Literal

import anndata as ad
import h5py
import numpy as np
import pandas as pd
from anndata.io import sparse_dataset
from pydantic import BaseModel, Field

from inference import gene_list
from inference.contract import MatrixLocation
from inference.data import gene_symbols, obs_strings, suggest_gene_column, var_of

# Values scanned per block: 8M values is 32-64 MB whatever the matrix's shape.
BLOCK_VALUES = 8 * 1024 * 1024
# Columns with at most this many distinct values get their value counts in the facts.
LOW_CARDINALITY = 50
# Seconds the HDF5 metadata probe may take (a healthy file's takes well under a second per GB of obs/var).
METADATA_TIMEOUT_S = 120.0

CountsLocation = MatrixLocation  # "raw.X", "X" or "layers/counts", looked at in that order
# The layer scanpy users keep counts in before normalising X (adata.layers["counts"] = adata.X.copy()).
COUNTS_LAYER = "counts"
_COUNTS_PLACES = '.X, .raw.X or .layers["counts"]'  # for messages: where STACK looks for counts
GZIP_MAGIC = b"\x1f\x8b"


class InputValidationError(ValueError):
    """An input the run cannot use. ``path``, ``problem`` and ``fix`` say which, why and what to do."""

    def __init__(self, path: str | Path, problem: str, fix: str) -> None:
        self.path = str(path)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.path}: {problem}. Fix: {fix}")

    def __reduce__(self):  # keep the fields when Prefect pickles the exception
        return (type(self), (self.path, self.problem, self.fix))


class ObsColumnFacts(BaseModel):
    """One ``obs`` column, as a planner needs it: what kind, and for categories, which and how many."""

    name: str
    kind: Literal["categorical", "numeric", "boolean", "text"]
    n_unique: int
    n_missing: int = Field(default=0, description="Cells with no value (NaN): never a value, context or filter.")
    value_counts: dict[str, int] | None = Field(
        default=None, description=f"Cells per value, for categorical or ≤{LOW_CARDINALITY}-valued columns."
    )


class MatrixStats(BaseModel):
    """What a scan of one matrix found."""

    location: CountsLocation
    sparse: bool
    dtype: str
    n_values_scanned: int
    n_nonfinite: int = 0
    n_negative: int = 0
    n_noninteger: int = 0
    max_value: float | None = None

    @property
    def is_counts(self) -> bool:
        return self.n_nonfinite == 0 and self.n_negative == 0 and self.n_noninteger == 0


class DatasetFacts(BaseModel):
    """What a validated h5ad holds: shape, where its counts are, gene overlap, its obs columns."""

    path: str
    size_bytes: int
    sha256: str | None = Field(
        default=None, description="Content hash of the validated bytes (set by the validate-input task)."
    )
    n_obs: int
    n_vars: int = Field(description="Genes in the matrix STACK reads (raw.X's genes when counts are there).")
    counts_location: CountsLocation | None = Field(
        description="Where the raw counts are; None when counts were not required and none were found."
    )
    matrix_used: CountsLocation = Field(description="The matrix STACK will read: the job spec names it.")
    gene_name_column: str | None = Field(
        default=None, description="The var column whose values were matched as gene symbols; None: var_names."
    )
    sparse: bool
    max_value: float | None
    gene_overlap: float | None = Field(
        default=None, description="Fraction of the model's genes found in the input (upper-cased symbols)."
    )
    genes_matched: int | None = None
    model_genes: int | None = None
    var_names_sample: list[str] = Field(description="The first few gene names, for messages and reports.")
    obs_columns: list[ObsColumnFacts]

    def obs_column(self, name: str) -> ObsColumnFacts | None:
        return next((c for c in self.obs_columns if c.name == name), None)


@contextmanager
def _failures_reported(path: str | Path, problem: str, fix: str) -> Iterator[None]:
    """Any error inside becomes ``InputValidationError(path, "<problem> (<error>)", fix)``.

    For reads whose every failure is the input's fault: h5py and anndata raise many kinds
    for damaged files, and the user needs the same message whichever it was.
    """
    try:
        yield
    except InputValidationError:
        raise
    except Exception as exc:  # noqa: BLE001 - see above
        raise InputValidationError(path, f"{problem} ({type(exc).__name__}: {exc})", fix) from None


# -- the gene list ---------------------------------------------------------------------------------


def read_gene_list(path: str | Path) -> list[str]:
    """The model's gene list (a pickled list of symbols, .json or .txt), returned upper-cased.

    Read with :mod:`inference.gene_list`, whose unpickler builds only strings and lists: a request
    may name its own gene list, and nothing it names may run code.
    """
    try:
        genes = gene_list.read_gene_list(path)
    except gene_list.GeneListError as exc:
        raise InputValidationError(exc.path, exc.problem, exc.fix) from None
    return [g.upper() for g in genes]


# -- validation ------------------------------------------------------------------------------------


def validate_h5ad(
    path: str | Path,
    *,
    model_genes: Sequence[str] | None = None,
    min_gene_overlap: float = 0.5,
    counts_required: bool = True,
    required_obs: Mapping[str, Sequence[str] | None] | None = None,
    gene_name_column: str | None = None,
    block_values: int = BLOCK_VALUES,
    metadata_timeout_s: float = METADATA_TIMEOUT_S,
) -> DatasetFacts:
    """Check one h5ad and return its facts, or raise InputValidationError with the first problem.

    ``required_obs`` maps obs columns the run needs to the values it needs in them (None: any).
    ``gene_name_column`` names the var column holding gene symbols (arc-stack's ``--gene-name-col``).
    ``block_values`` bounds the values held in memory at once while scanning a matrix.
    ``metadata_timeout_s`` bounds the child process that reads the file's HDF5 metadata first.
    """
    path = Path(path)
    _check_readable_hdf5(path, metadata_timeout_s)
    adata = _open_backed(path)
    try:
        return _validate_open(
            path, adata, model_genes, min_gene_overlap, counts_required, required_obs or {}, gene_name_column,
            block_values,
        )
    finally:
        adata.file.close()


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


def _check_readable_hdf5(path: Path, timeout_s: float = METADATA_TIMEOUT_S) -> None:
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


def _open_backed(path: Path) -> ad.AnnData:
    rewrite = "re-write it with a current anndata (adata.write_h5ad(path))"
    with _failures_reported(path, "AnnData cannot read it", rewrite):  # anndata raises many kinds
        return ad.read_h5ad(path, backed="r")


def _validate_open(
    path: Path,
    adata: ad.AnnData,
    model_genes: Sequence[str] | None,
    min_gene_overlap: float,
    counts_required: bool,
    required_obs: Mapping[str, Sequence[str] | None],
    gene_name_column: str | None,
    block_values: int,
) -> DatasetFacts:
    if adata.n_obs == 0:
        raise InputValidationError(
            path, "the data set has no cells (0 observations)", "select cells before saving, or pick another file"
        )
    if adata.n_vars == 0:
        raise InputValidationError(path, "the data set has no genes (0 variables)", "save the data with its genes")
    _reject_duplicate_cells(path, adata.obs_names)

    used, stats, counts_at = _find_counts(path, adata, block_values)
    _reject_bad_values(path, stats[used], counts_required and counts_at is None, stats, _other_layers(adata))

    with _reading(path, f"the gene names of {_where(used)}"):
        var = var_of(adata, used)
    var_names = gene_symbols(var, gene_name_column)
    if var_names is None:
        raise InputValidationError(
            path,
            f"gene_name_column {gene_name_column!r} is not a column of the var of {_where(used)} "
            f"(columns: {', '.join(map(str, var.columns)) or 'none'})",
            "name the var column that holds gene symbols (CELLxGENE: feature_name), or leave gene_name_column "
            "unset to match var_names",
        )
    _reject_duplicate_genes(path, var_names, used, gene_name_column)
    overlap = _gene_overlap(path, var_names, model_genes, min_gene_overlap, var, gene_name_column)
    obs = adata.obs
    _reject_missing_obs(path, obs, required_obs)

    return DatasetFacts(
        path=str(path),
        size_bytes=path.stat().st_size,
        n_obs=adata.n_obs,
        n_vars=len(var_names),
        counts_location=counts_at,
        matrix_used=used,
        gene_name_column=gene_name_column,
        sparse=stats[used].sparse,
        max_value=stats[used].max_value,
        gene_overlap=overlap[0] if overlap else None,
        genes_matched=overlap[1] if overlap else None,
        model_genes=len(set(model_genes)) if model_genes else None,
        var_names_sample=list(var_names[:10]),
        obs_columns=[_obs_column_facts(name, obs[name]) for name in obs.columns],
    )


def _find_counts(
    path: Path, adata: ad.AnnData, block_values: int
) -> tuple[CountsLocation, dict[CountsLocation, MatrixStats], CountsLocation | None]:
    """Scan the candidate matrices in order until one holds counts.

    Returns the matrix to use (the counts, else the first candidate), every scan made, and where the
    counts are (None when no candidate holds them).
    """
    with _reading(path, "the matrices (.X, .raw.X, .layers)"):
        candidates = _matrices(adata)
    if not candidates:
        raise InputValidationError(
            path, "neither .X nor .raw.X holds a matrix", f"store the raw counts in {_COUNTS_PLACES}"
        )
    stats: dict[CountsLocation, MatrixStats] = {}
    for loc, matrix in candidates.items():
        with _reading(path, _where(loc)):
            stats[loc] = _scan(loc, matrix, block_values)
        if stats[loc].is_counts:
            return loc, stats, loc
    return next(iter(stats)), stats, None  # raw.X first when it exists


def _where(location: CountsLocation) -> str:
    """How a user writes the location in Python: .raw.X, .X, .layers["counts"]."""
    if location.startswith("layers/"):
        return f'.layers["{location.removeprefix("layers/")}"]'
    return f".{location}"


def _reject_duplicate_cells(path: Path, obs_names: pd.Index) -> None:
    """Cells are matched by name (query cells to their predictions): each name must be one cell."""
    dupes = obs_names[obs_names.duplicated()].unique()
    if len(dupes):
        examples = ", ".join(map(str, dupes[:5]))
        raise InputValidationError(
            path,
            f"duplicate cell names in obs_names ({_plural(len(dupes), 'name')} used more than once, e.g. {examples}); "
            "cells are matched to their predictions by name",
            "make them unique before saving (adata.obs_names_make_unique())",
        )


def _reading(path: Path, what: str) -> AbstractContextManager[None]:
    """Reads of an opened file's matrices: damage HDF5 finds only now (a bad attribute, a data
    address past the end) becomes an InputValidationError instead of h5py's RuntimeError/OSError."""
    return _failures_reported(
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


def _other_layers(adata: ad.AnnData) -> list[str]:
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


def _reject_bad_values(
    path: Path, used: MatrixStats, need_counts: bool, all_stats: dict, other_layers: Sequence[str] = ()
) -> None:
    where = _where(used.location)
    if used.n_nonfinite:
        raise InputValidationError(
            path,
            f"{where} has {_plural(used.n_nonfinite, 'non-finite value')} (NaN or infinity)",
            "replace them (e.g. X[~np.isfinite(X)] = 0) or re-export the raw counts",
        )
    if used.n_negative:
        raise InputValidationError(
            path,
            f"{where} has {_plural(used.n_negative, 'negative value')}, so it is not expression counts (scaled or centred data?)",
            f"store the raw counts in {_COUNTS_PLACES}",
        )
    if need_counts:
        looked = _and(_where(s.location) for s in all_stats.values())
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
            f"{looked} {verb} no raw counts: {_plural(used.n_noninteger, 'value')} in {where} are not whole numbers "
            f"(max {used.max_value:.4g}; log-normalised data?). STACK needs raw counts in {_COUNTS_PLACES}",
            fix,
        )


def _and(items: Iterable[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _reject_duplicate_genes(
    path: Path, var_names: pd.Index, location: CountsLocation, gene_name_column: str | None = None
) -> None:
    upper = var_names.str.upper()
    dupes = upper[upper.duplicated()].unique()
    if len(dupes):
        examples = ", ".join(dupes[:5])
        names = f"var[{gene_name_column!r}]" if gene_name_column else "the genes"
        fix = "make them unique (adata.var_names_make_unique()) or sum the duplicated genes"
        if gene_name_column:
            fix = f"make the values of var[{gene_name_column!r}] unique or sum the duplicated genes"
        raise InputValidationError(
            path,
            f"duplicate gene names in {names} of {_where(location)} "
            f"({_plural(len(dupes), 'name')}, compared upper-cased: {examples})",
            fix,
        )


def _gene_overlap(
    path: Path,
    var_names: pd.Index,
    model_genes: Sequence[str] | None,
    threshold: float,
    var: pd.DataFrame | None = None,
    gene_name_column: str | None = None,
) -> tuple[float, int] | None:
    if not model_genes:
        return None
    model = {g.upper() for g in model_genes}
    matched = len(model & set(var_names.str.upper()))
    fraction = matched / len(model)
    if fraction < threshold:
        named = f"var[{gene_name_column!r}]" if gene_name_column else "var_names"
        raise InputValidationError(
            path,
            f"gene overlap with the model is {fraction:.1%} ({matched} of {len(model)} model genes), "
            f"below the required {threshold:.0%}; genes ({named}) look like {', '.join(var_names[:3])}",
            _overlap_fix(var, model, matched, gene_name_column),
        )
    return fraction, matched


def _overlap_fix(var: pd.DataFrame | None, model: set[str], matched: int, gene_name_column: str | None) -> str:
    """Name the gene names that would match better: a var column (CELLxGENE's feature_name), or var_names."""
    if var is not None:
        better = suggest_gene_column(var, sorted(model), current=gene_name_column)
        if better and better[1] > matched:
            column, hits = better
            return (
                f"set gene_name_column={column!r}: var[{column!r}] holds {hits} of the {len(model)} model genes "
                "(symbols there, other ids in var_names, as CELLxGENE files have them)"
            )
        if gene_name_column is not None:
            hits = len(model & set(var.index.astype(str).str.upper()))
            if hits > matched:
                return f"leave gene_name_column unset: var_names hold {hits} of the {len(model)} model genes"
    return (
        "use gene symbols (not Ensembl ids) for var_names or name the var column that holds them "
        "(gene_name_column), include all measured genes (not only highly variable ones), or lower "
        "model.min_gene_overlap"
    )


def _reject_missing_obs(path: Path, obs: pd.DataFrame, required: Mapping[str, Sequence[str] | None]) -> None:
    for column, values in required.items():
        if column not in obs.columns:
            raise InputValidationError(
                path,
                f"obs column {column!r} is missing (columns: {', '.join(map(str, obs.columns)) or 'none'})",
                "name one of the existing columns, or add the column to adata.obs",
            )
        present = set(obs_strings(obs[column]).dropna().unique())  # NaN is no value
        missing = [v for v in values or [] if str(v) not in present]
        if missing:
            shown = ", ".join(sorted(present)[:20])
            raise InputValidationError(
                path,
                f"obs column {column!r} has no cells with value(s) {', '.join(map(repr, missing))} (values: {shown})",
                "pick values that occur in the column (they are compared as strings)",
            )


def _obs_column_facts(name: str, column: pd.Series) -> ObsColumnFacts:
    if isinstance(column.dtype, pd.CategoricalDtype):
        kind = "categorical"
    elif pd.api.types.is_bool_dtype(column):
        kind = "boolean"
    elif pd.api.types.is_numeric_dtype(column):
        kind = "numeric"
    else:
        kind = "text"
    n_unique = int(column.nunique(dropna=True))
    counts = None
    if kind in ("categorical", "boolean") or n_unique <= LOW_CARDINALITY:
        vc = obs_strings(column).value_counts().head(LOW_CARDINALITY)  # missing values are not counted as one
        counts = {str(k): int(v) for k, v in vc.items()}
    n_missing = int(column.isna().sum())
    return ObsColumnFacts(name=str(name), kind=kind, n_unique=n_unique, n_missing=n_missing, value_counts=counts)
