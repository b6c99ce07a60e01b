"""The query cell type's own markers, from the input data: what identity preservation checks.

The input's cells (query and prompt, raw counts) are normalised to log1p-CPM and scanpy's
``rank_genes_groups`` (Wilcoxon) ranks the query type against every other type together. The top
markers raised in that type, among the genes the model and input share, are kept.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from inference.contract import IdentityMarkers

log = logging.getLogger("inference.markers")

OTHER = "other types"


def identity_markers(
    counts: np.ndarray | sp.spmatrix,
    cell_types: Sequence[str | None],
    genes: Sequence[str],
    *,
    cell_type_column: str,
    cell_type: str,
    n_genes: int = 20,
) -> IdentityMarkers | None:
    """Top ``n_genes`` markers of ``cell_type`` against the other types; None when there is no other type.

    ``counts``: raw counts, cells x ``genes`` (the shared genes only); ``cell_types`` per cell (None:
    unlabelled, left out).
    """
    import scanpy as sc

    labels = pd.Series(list(cell_types), dtype=object)
    labelled = labels.notna().to_numpy()
    is_type = (labels == cell_type).to_numpy() & labelled
    is_other = labelled & ~is_type
    if not is_type.any() or not is_other.any():
        log.info("identity markers not computed: %d cells of type %r and %d of other types in %r",
                 int(is_type.sum()), cell_type, int(is_other.sum()), cell_type_column)
        return None
    keep = np.flatnonzero(labelled)
    group = np.where(is_type[keep], "query type", OTHER)
    adata = ad.AnnData(
        X=sp.csr_matrix(counts[keep], dtype=np.float32),
        obs=pd.DataFrame({"group": pd.Categorical(group)}, index=[str(i) for i in keep]),
        var=pd.DataFrame(index=pd.Index([str(g) for g in genes]).astype(str)),
    )
    adata.var_names_make_unique()
    sc.pp.normalize_total(adata, target_sum=1e6)
    sc.pp.log1p(adata)
    sc.tl.rank_genes_groups(adata, "group", groups=["query type"], reference=OTHER, method="wilcoxon")
    ranked = sc.get.rank_genes_groups_df(adata, group="query type")
    raised = ranked[ranked["scores"] > 0]
    return IdentityMarkers(
        cell_type_column=cell_type_column,
        cell_type=cell_type,
        genes=[str(genes[adata.var_names.get_loc(n)]) for n in raised["names"].head(n_genes)],
        cells_of_type=int(is_type.sum()),
        cells_other=int(is_other.sum()),
        method=f"scanpy {sc.__version__} rank_genes_groups wilcoxon on log1p-CPM, {cell_type!r} vs the other types",
    )
