"""Small real inputs for whole-run tests: a 120-cell slice of scanpy's pbmc68k_reduced as counts,
its gene list, and a tiny untrained STACK checkpoint built with arc-stack's own classes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class Inputs:
    h5ad: Path
    gene_list: Path
    checkpoint: Path

    def request_body(self, question: str, **overrides: object) -> dict:
        """An analysis request on these inputs with an explicit plan (B cells as the context for
        monocytes, 2 steps), so no agent key is needed; ``overrides`` replace fields."""
        h5ad = self.h5ad.as_uri()
        body = {
            "question": question,
            "prompt_uri": h5ad,
            "query_uri": h5ad,
            "gene_list_uri": self.gene_list.as_uri(),
            "checkpoint_uri": self.checkpoint.as_uri(),
            "split_column": "bulk_labels",
            "split_values": ["CD19+ B"],
            "query_obs_filter": {"bulk_labels": ["CD14+ Monocyte"]},
            "num_steps": 2,
        }
        return {**body, **overrides}


def make_inputs(directory: Path) -> Inputs:
    """120 cells of pbmc68k as counts (B cells, monocytes, NK), its gene list, a tiny checkpoint."""
    import anndata as ad
    import numpy as np

    from deployments.demo_data import prepare_demo_data
    from inference.make_checkpoint import build_checkpoint, read_gene_list

    demo = prepare_demo_data(directory / "demo")
    full = ad.read_h5ad(demo.h5ad)
    keep = []
    for label in ("CD19+ B", "CD14+ Monocyte", "CD56+ NK"):
        keep += list(np.flatnonzero(full.obs["bulk_labels"] == label)[:40])
    subset = full[sorted(keep)].copy()
    h5ad = directory / "inputs" / "pbmc_subset.h5ad"
    h5ad.parent.mkdir(parents=True, exist_ok=True)
    subset.write_h5ad(h5ad)
    checkpoint = build_checkpoint(read_gene_list(demo.gene_list), directory / "inputs" / "tiny.ckpt")
    return Inputs(h5ad=h5ad, gene_list=demo.gene_list, checkpoint=checkpoint)

