"""Differential expression of predictions against their reference, per treated context.

Both arms are compared on log1p(counts per million), the library being each cell's total over the
genes given (the background both the model and the query input have), so a gene only one side can
have never dilutes the other. Genes are processed in chunks of at most CHUNK_ELEMENTS values (fewer
genes as cells grow): memory is one bounded dense chunk per arm, never cells x all genes.

- Synthetic control (:func:`paired_de`): treated and control cells are the same query cells
  generated under two contexts, aligned by ``query_cell`` id. The per-cell difference is tested
  with scipy's Wilcoxon signed-rank test across query cells. pdex and scanpy's rank_genes_groups
  do not fit here: they test two independent groups and would throw the pairing away.
- Query-as-control (:func:`unpaired_de`): the generated cells against the query input's own
  cells, two independent groups: Arc's pdex (Mann-Whitney U) on log1p-CPM.

P-values over generated cells are descriptive: they shrink as cells are added.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from importlib.metadata import version

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from inference.contract import DE_COLUMNS

log = logging.getLogger("inference.de")

PAIRED_TEST = "wilcoxon signed-rank, paired by query_cell"
UNPAIRED_TEST = "mann-whitney u (unpaired: query input as control)"
CHUNK_GENES = 1024  # genes per chunk at most
# Cells x genes per dense chunk at most (float64: 32 MiB per block): with many cells the chunk has
# fewer genes, so DE memory stays bounded whatever the number of query cells. Every gene's test is
# its own, so the chunking never changes a result.
CHUNK_ELEMENTS = 2**22

Matrix = np.ndarray | sp.spmatrix | sp.sparray


def library_sizes(counts: Matrix) -> np.ndarray:
    """Per-cell totals over the given genes (float64, at least 1 so an empty cell is all zeros)."""
    total = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
    return np.maximum(total, 1.0)


def genes_per_chunk(n_cells: int, chunk_genes: int = CHUNK_GENES) -> int:
    """Genes per chunk for arms of ``n_cells`` cells in all: at most ``chunk_genes``, at most CHUNK_ELEMENTS values."""
    return max(1, min(chunk_genes, CHUNK_ELEMENTS // max(1, n_cells)))


def gene_chunks(n_genes: int, chunk: int = CHUNK_GENES) -> Iterator[slice]:
    for start in range(0, n_genes, chunk):
        yield slice(start, min(start + chunk, n_genes))


def _columns(counts: Matrix, cols: slice) -> np.ndarray:
    """One dense chunk of columns; ``counts`` is dense or CSC (cheap column slices)."""
    block = counts[:, cols]
    return block.toarray() if sp.issparse(block) else np.asarray(block)


def _log1p_cpm(block: np.ndarray, library: np.ndarray) -> np.ndarray:
    return np.log1p(block.astype(np.float64) / library[:, None] * 1e6)


def _column_major(counts: Matrix) -> Matrix:
    return sp.csc_matrix(counts) if sp.issparse(counts) else np.asarray(counts)


def _check_shapes(genes: Sequence[str], *arms: Matrix) -> None:
    for arm in arms:
        if arm.shape[1] != len(genes):
            raise ValueError(f"a matrix has {arm.shape[1]} columns but {len(genes)} genes were named")
        if arm.shape[0] == 0:
            raise ValueError("an arm has no cells: DE needs cells on both sides")


def _q_values(p: np.ndarray) -> np.ndarray:
    from scipy.stats import (
        false_discovery_control,  # scipy.stats costs the job ~0.5 s to import: only when used
    )

    return false_discovery_control(p, method="bh") if p.size else p


def _frame(
    *, split_value: str, genes: Sequence[str], mean_t: np.ndarray, mean_r: np.ndarray, lfc: np.ndarray,
    stat: np.ndarray, p: np.ndarray, same: np.ndarray, reference: str, test: str,
) -> pd.DataFrame:
    p = np.where(np.isfinite(p), np.clip(p, 0.0, 1.0), 1.0)  # untestable (constant) genes: no evidence
    frame = pd.DataFrame({
        "split_value": split_value, "gene": list(genes), "mean_treated": mean_t, "mean_reference": mean_r,
        "log_fold_change": lfc, "statistic": stat, "p_value": p, "q_value": _q_values(p),
        "fraction_same_direction": same, "reference": reference, "test": test,
    })
    return frame[DE_COLUMNS]


def align_pairs(query_cells_treated: Sequence[str], query_cells_control: Sequence[str]) -> np.ndarray:
    """For each treated row, the control row of the same query cell (ids, never positions)."""
    treated = pd.Index([str(c) for c in query_cells_treated])
    control = pd.Index([str(c) for c in query_cells_control])
    if treated.has_duplicates or control.has_duplicates:
        raise ValueError("query_cell ids repeat within an arm: each query cell must appear once per context")
    order = control.get_indexer(treated)
    if (order < 0).any() or len(control) != len(treated):
        missing = list(treated[order < 0][:3]) or list(control.difference(treated)[:3])
        raise ValueError(f"treated and control arms hold different query cells (e.g. {missing}); cannot pair them")
    return order


def paired_de(
    treated: Matrix,
    control: Matrix,
    genes: Sequence[str],
    *,
    split_value: str,
    reference_value: str,
    query_cells_treated: Sequence[str],
    query_cells_control: Sequence[str],
    chunk_genes: int = CHUNK_GENES,
) -> pd.DataFrame:
    """DE of one treated context against the synthetic control, paired by query cell.

    ``treated``/``control``: raw counts, cells x ``genes``. LFC is the mean over query cells of the
    per-cell log1p-CPM difference; the Wilcoxon signed-rank test runs across query cells (a gene
    with no nonzero difference gets p = 1). ``reference_value`` names the control context in logs.
    """
    from scipy.stats import wilcoxon

    _check_shapes(genes, treated, control)
    order = align_pairs(query_cells_treated, query_cells_control)
    control = control[order]
    lib_t, lib_c = library_sizes(treated), library_sizes(control)
    treated, control = _column_major(treated), _column_major(control)
    n = len(genes)
    mean_t, mean_c, lfc, stat, p, same = (np.zeros(n) for _ in range(6))
    p[:] = 1.0
    for cols in gene_chunks(n, genes_per_chunk(2 * len(order), chunk_genes)):
        t = _log1p_cpm(_columns(treated, cols), lib_t)
        c = _log1p_cpm(_columns(control, cols), lib_c)
        diff = t - c
        mean_t[cols], mean_c[cols] = t.mean(axis=0), c.mean(axis=0)
        del t, c
        lfc[cols] = diff.mean(axis=0)
        same[cols] = _same_sign(diff, lfc[cols])
        moving = np.flatnonzero((diff != 0).any(axis=0))
        if moving.size:
            result = wilcoxon(diff[:, moving], axis=0)
            idx = np.arange(cols.start, cols.stop)[moving]
            stat[idx], p[idx] = result.statistic, result.pvalue
    log.info("paired DE of %r against %r: %d genes, %d query cells", split_value, reference_value, n, len(order))
    return _frame(split_value=split_value, genes=genes, mean_t=mean_t, mean_r=mean_c, lfc=lfc, stat=stat, p=p,
                  same=same, reference="synthetic_control", test=PAIRED_TEST)


def _same_sign(diff: np.ndarray, lfc: np.ndarray) -> np.ndarray:
    """Share of rows whose difference has the sign of the column's LFC (zero LFC: rows with none)."""
    return (np.sign(diff) == np.sign(lfc)[None, :]).mean(axis=0)


def unpaired_de(
    treated: Matrix,
    reference: Matrix,
    genes: Sequence[str],
    *,
    split_value: str,
    chunk_genes: int = CHUNK_GENES,
    threads: int = 0,
) -> pd.DataFrame:
    """DE of one treated context's generated cells against the query input's own cells (pdex MWU).

    LFC = mean_treated - mean_reference of log1p-CPM (pdex's own fold change is of pseudobulk
    means in count space, so only its test is used); BH over every gene of the context.
    """
    from pdex import pdex

    _check_shapes(genes, treated, reference)
    lib_t, lib_r = library_sizes(treated), library_sizes(reference)
    treated, reference = _column_major(treated), _column_major(reference)
    n_t, n_r, n = treated.shape[0], reference.shape[0], len(genes)
    arms = pd.DataFrame({"arm": ["treated"] * n_t + ["reference"] * n_r},
                        index=[f"t{i}" for i in range(n_t)] + [f"r{i}" for i in range(n_r)])
    mean_t, mean_r, stat, p, same = (np.zeros(n) for _ in range(5))
    for cols in gene_chunks(n, genes_per_chunk(n_t + n_r, chunk_genes)):
        t = _log1p_cpm(_columns(treated, cols), lib_t)
        r = _log1p_cpm(_columns(reference, cols), lib_r)
        names = [f"g{i}" for i in range(cols.start, cols.stop)]  # gene symbols need not be unique to pdex
        chunk = ad.AnnData(X=np.vstack([t, r]), obs=arms, var=pd.DataFrame(index=names))
        result = pdex(chunk, groupby="arm", mode="ref", reference="reference", is_log1p=True, as_pandas=True,
                      threads=threads).set_index("feature").reindex(names)
        stat[cols], p[cols] = result["statistic"].to_numpy(float), result["p_value"].to_numpy(float)
        mean_t[cols], mean_r[cols] = t.mean(axis=0), r.mean(axis=0)
        lfc = mean_t[cols] - mean_r[cols]
        same[cols] = _same_sign(t - mean_r[cols][None, :], lfc)
    return _frame(split_value=split_value, genes=genes, mean_t=mean_t, mean_r=mean_r, lfc=mean_t - mean_r,
                  stat=stat, p=p, same=same, reference="query_input",
                  test=f"{UNPAIRED_TEST}, pdex {version('pdex')}")
