"""Cell embeddings with the pretrained STACK model, through its own ``get_latent_representation``.

Embedding is one forward pass per window of ``n_cells`` cells, so arc-stack's method is used as it
is; the job only feeds it chunks of whole windows (a multiple of ``n_cells`` cells, so every window
holds the same cells as in one call) to report progress and bound host memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from inference import precision as precision_mod
from inference.contract import Precision


def chunk_cells(n_cells: int, chunk_size: int) -> int:
    """Cells per chunk: ``chunk_size`` rounded up to whole windows."""
    return max(1, math.ceil(chunk_size / n_cells)) * n_cells


@torch.no_grad()
def embed_cells(
    model: torch.nn.Module,
    counts: np.ndarray,
    genes: list[str],
    gene_list_path: Path,
    *,
    batch_size: int,
    chunk_size: int,
    precision: Precision,
    on_chunk: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """(cells, n_hidden * token_dim) embeddings; ``on_chunk(chunk_index, cells_done)`` as chunks finish."""
    device = next(model.parameters()).device
    per_chunk = chunk_cells(int(model.n_cells), chunk_size)
    parts = []
    for index, start in enumerate(range(0, counts.shape[0], per_chunk), start=1):
        block = counts[start : start + per_chunk]
        adata = ad.AnnData(
            X=sp.csr_matrix(block),
            obs=pd.DataFrame(index=[str(i) for i in range(block.shape[0])]),
            var=pd.DataFrame(index=genes),
        )
        with precision_mod.autocast(precision, device):
            emb, _ = model.get_latent_representation(
                adata, str(gene_list_path), batch_size=batch_size, show_progress=False, num_workers=0
            )
        parts.append(np.asarray(emb, dtype=np.float32))
        if on_chunk is not None:
            on_chunk(index, start + block.shape[0])
    return np.concatenate(parts, axis=0)
