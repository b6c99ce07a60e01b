"""predictions.h5ad written as the contexts finish: one context's rows at a time, never all of them.

The sparse X is appended to the file in row chunks (anndata's ``sparse_dataset(...).append``), and
obs/var/uns are written once at the end: the file is a plain h5ad that ``ad.read_h5ad`` reads back
as if ``write_h5ad`` had written it, and no list of contexts or ``vstack`` copy is ever held.

The big matrix is compressed with lzf (or not at all): gzip took the GPU machine minutes on
released-size runs for a few percent of space (see benchmarks/README.md, "Scale").
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

Compression = Literal["lzf", "gzip", "none"]
DEFAULT_COMPRESSION: Compression = "lzf"
ROW_CHUNK = 8192  # rows appended per write: bounds the copy h5py makes of each piece


def dataset_kwargs(compression: Compression) -> dict:
    return {} if compression == "none" else {"compression": compression}


class PredictionsWriter:
    """Append CSR rows to ``path``'s X, then ``finish`` with obs, var and uns."""

    def __init__(self, path: Path, n_genes: int, *, compression: Compression = DEFAULT_COMPRESSION) -> None:
        self.path = path
        self.n_genes = n_genes
        self.kwargs = dataset_kwargs(compression)
        self.file = h5py.File(path, "w")
        self.rows = 0
        self._x = None

    def append(self, rows: sp.csr_matrix) -> None:
        """Append ``rows`` (cells x genes, float32 CSR) below what was written, in row chunks."""
        from anndata.io import sparse_dataset, write_elem

        if rows.shape[1] != self.n_genes:
            raise ValueError(f"rows have {rows.shape[1]} columns, the predictions {self.n_genes}")
        for start in range(0, rows.shape[0], ROW_CHUNK):
            piece = sp.csr_matrix(rows[start : start + ROW_CHUNK], dtype=np.float32)
            if self._x is None:
                write_elem(self.file, "X", piece, dataset_kwargs=self.kwargs)
                self._x = sparse_dataset(self.file["X"])
            else:
                self._x.append(piece)
            self.rows += piece.shape[0]

    def finish(self, obs: pd.DataFrame, var: pd.DataFrame, uns: dict) -> None:
        """Write the annotations and close; the file is then a complete h5ad."""
        from anndata.io import write_elem

        if len(obs) != self.rows:
            raise ValueError(f"obs has {len(obs)} rows but {self.rows} were written")
        if self._x is None:  # no rows at all: an empty matrix still makes a valid file
            write_elem(self.file, "X", sp.csr_matrix((0, self.n_genes), dtype=np.float32), dataset_kwargs=self.kwargs)
        skeleton = ad.AnnData(obs=obs, var=var, uns=uns)  # X None: only the annotations are taken from it
        skeleton.strings_to_categoricals()  # as write_h5ad does, so the file reads back the same
        for key in ("obs", "var"):
            write_elem(self.file, key, getattr(skeleton, key), dataset_kwargs=self.kwargs)
        for key in ("obsm", "varm", "obsp", "varp", "layers"):
            write_elem(self.file, key, {})
        write_elem(self.file, "uns", dict(skeleton.uns))
        self.file.attrs["encoding-type"] = "anndata"
        self.file.attrs["encoding-version"] = "0.1.0"
        self.close()

    def close(self) -> None:
        if self.file.id.valid:
            self.file.close()


def read_rows(path: Path, start: int, stop: int) -> sp.csr_matrix:
    """Rows ``start:stop`` of a written predictions file's X, read from disk (one context's block)."""
    from anndata.io import sparse_dataset

    with h5py.File(path, "r") as f:
        return sp.csr_matrix(sparse_dataset(f["X"])[start:stop])
