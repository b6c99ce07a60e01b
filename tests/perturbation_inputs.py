"""A small perturbation experiment for whole-run grounding tests: two cell types under a control
(PBS) and a treatment (LPS) whose real cells carry a planted gene-set effect, as counts over
pbmc68k's real gene symbols, with the tiny untrained STACK checkpoint over those genes.

The query is the monocytes under PBS; the prompt is every cell, so the prompt holds real monocytes
under LPS: the backtest holds them out and scores the prediction of LPS against them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CELL_TYPES = ("CD14+ Monocyte", "CD19+ B")
CONTROL, TREATED = "PBS", "LPS"
CELLS_PER_GROUP = 30


@dataclass
class PerturbationInputs:
    h5ad: Path
    gene_list: Path
    checkpoint: Path
    planted: list[str]  # genes the real LPS cells raise

    def request_body(self, question: str, **overrides: object) -> dict:
        """Monocytes generated under LPS against a synthetic PBS control, 2 steps."""
        h5ad = self.h5ad.as_uri()
        body = {
            "question": question,
            "prompt_uri": h5ad,
            "query_uri": h5ad,
            "gene_list_uri": self.gene_list.as_uri(),
            "checkpoint_uri": self.checkpoint.as_uri(),
            "split_column": "condition",
            "split_values": [TREATED],
            "control_value": CONTROL,
            "query_obs_filter": {"cell_type": [CELL_TYPES[0]], "condition": [CONTROL]},
            "cell_type_column": "cell_type",
            "query_cell_type": CELL_TYPES[0],
            "expected_up": self.planted[:5],
            "num_steps": 2,
        }
        return {**body, **overrides}


def make_perturbation_inputs(directory: Path, planted_genes: list[str]) -> PerturbationInputs:
    """Counts for 2 types x 2 conditions x 30 cells; LPS multiplies ``planted_genes`` by 4 in real cells."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    from deployments.demo_data import prepare_demo_data
    from inference.make_checkpoint import build_checkpoint, read_gene_list

    demo = prepare_demo_data(directory / "demo")
    genes = [str(g) for g in read_gene_list(demo.gene_list)]
    planted = [g for g in planted_genes if g in set(genes)]
    rng = np.random.default_rng(7)
    base = {t: rng.gamma(0.6, 2.0, size=len(genes)) for t in CELL_TYPES}  # each type its own profile
    effect = np.where(np.isin(genes, planted), 4.0, 1.0)
    blocks, obs = [], []
    for cell_type in CELL_TYPES:
        for condition in (CONTROL, TREATED):
            mean = base[cell_type] * (effect if condition == TREATED else 1.0)
            blocks.append(rng.poisson(mean, size=(CELLS_PER_GROUP, len(genes))).astype(np.float32))
            obs += [{"cell_type": cell_type, "condition": condition}] * CELLS_PER_GROUP
    frame = pd.DataFrame(obs, index=[f"cell-{i}" for i in range(len(obs))]).astype("category")
    adata = ad.AnnData(X=sp.csr_matrix(np.vstack(blocks)), obs=frame, var=pd.DataFrame(index=genes))
    h5ad = directory / "inputs" / "perturbation.h5ad"
    h5ad.parent.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(h5ad)
    checkpoint = build_checkpoint(genes, directory / "inputs" / "tiny.ckpt")
    return PerturbationInputs(h5ad=h5ad, gene_list=demo.gene_list, checkpoint=checkpoint, planted=planted)
