"""Reading a model's gene list without running code from it.

A request may name its own gene list, and ``pickle.load`` on a file someone else wrote runs
whatever that file asks for. arc-stack ships its gene list as a pickled list of symbols, so pickles
are read here with an unpickler that can build nothing but the built-in containers and strings (and
numpy string arrays, which some users save instead); any other class or function a pickle names is
refused before it is looked up. Plain text (one symbol a line) and JSON (a list of strings) are
accepted too. Used by the flow (validation) and the GPU job alike; imports neither Prefect nor torch.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

TEXT_SUFFIXES = {".txt", ".tsv", ".csv"}
JSON_SUFFIXES = {".json"}

# The only globals a gene-list pickle may name: numpy's array reconstruction (a string array).
# Object arrays unpickle their items through this same unpickler, so they stay restricted.
_NUMPY_ARRAY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class GeneListError(ValueError):
    """The file is not a list of gene symbols; ``problem`` says why, ``fix`` what to do."""

    def __init__(self, path: str | Path, problem: str, fix: str) -> None:
        self.path, self.problem, self.fix = str(path), problem, fix
        super().__init__(f"{self.path}: {problem}. Fix: {fix}")

    def __reduce__(self):  # keep the fields when Prefect pickles the exception
        return (type(self), (self.path, self.problem, self.fix))


FIX = (
    "use the gene list shipped with the checkpoint: a pickled list of symbol strings, a .json list "
    "of strings, or a .txt file with one symbol per line"
)


class _Refused(pickle.UnpicklingError):
    """A pickle named a class or function outside the allowed few."""


class _GeneListUnpickler(pickle.Unpickler):
    """Builds lists, tuples and strings; refuses every class or function a pickle names."""

    def find_class(self, module: str, name: str):
        if (module, name) in _NUMPY_ARRAY_GLOBALS:
            return super().find_class(module, name)
        raise _Refused(f"it asks for {module}.{name}, and a gene list may hold only strings")


def parse_gene_list(data: bytes, *, path: str | Path, suffix: str = "") -> list[str]:
    """The gene symbols in ``data``, as written (case kept), or :class:`GeneListError`."""
    if suffix in TEXT_SUFFIXES:
        genes: object = [line.strip() for line in data.decode("utf-8").splitlines() if line.strip()]
    elif suffix in JSON_SUFFIXES:
        try:
            genes = json.loads(data)
        except ValueError as exc:
            raise GeneListError(path, f"not valid JSON ({exc})", FIX) from None
    else:
        try:
            genes = _GeneListUnpickler(io.BytesIO(data)).load()
        except _Refused as exc:
            raise GeneListError(path, f"refused to unpickle: {exc}", FIX) from None
        except Exception as exc:  # noqa: BLE001 - a damaged pickle raises many kinds
            raise GeneListError(path, f"not a readable pickled gene list ({type(exc).__name__}: {exc})", FIX) from None
    if hasattr(genes, "tolist"):  # a numpy string array
        genes = genes.tolist()
    if isinstance(genes, tuple):
        genes = list(genes)
    if not isinstance(genes, list) or not genes or not all(isinstance(g, str) for g in genes):
        raise GeneListError(path, "the gene list must be a non-empty list of gene symbol strings", FIX)
    return genes


def read_gene_list(path: str | Path) -> list[str]:
    """The gene symbols in the file at ``path`` (pickle, .json or .txt), as written."""
    path = Path(path)
    if not path.is_file():
        raise GeneListError(path, "gene list file not found", "point gene_list_uri at the model's gene list")
    return parse_gene_list(path.read_bytes(), path=path, suffix=path.suffix.lower())
