"""Tiny STACK inputs for the job's tests: synthetic counts and random checkpoints (seconds to build)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from inference.contract import StackJobSpec
from inference.make_checkpoint import build_checkpoint, write_gene_list

REPO = Path(__file__).resolve().parents[2]
INPUT_GENES = [f"G{i}" for i in range(60)]
MODEL_GENES = [f"G{i}" for i in range(10, 70)]  # 50 shared with the inputs, 10 the inputs lack
SIZES = {"n_hidden": 4, "token_dim": 4, "n_cells": 16, "n_layers": 1, "n_heads": 2}


@dataclass(frozen=True)
class TinyInputs:
    root: Path
    query: Path
    prompt: Path
    genes: Path
    generate_ckpt: Path
    embed_ckpt: Path

    def spec(self, output_prefix: Path | str, **overrides) -> StackJobSpec:
        fields = dict(
            mode="generate", query_uri=self.query.as_uri(), prompt_uri=str(self.prompt),
            checkpoint_uri=self.generate_ckpt.as_uri(), gene_list_uri=str(self.genes),
            split_column="donor", num_steps=3, seed=7, batch_size=2, chunk_size=16,
            output_prefix=str(output_prefix),
        )
        fields.update(overrides)
        return StackJobSpec(**fields)


def run_job_process(spec: StackJobSpec, timeout: float = 240) -> subprocess.CompletedProcess:
    """The real entry point, as the batch runner starts it."""
    argv = spec.to_argv()
    return subprocess.run(
        [sys.executable, *argv[1:]], cwd=REPO, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def _cells(rng: np.random.Generator, n: int, donors: list[str]) -> ad.AnnData:
    counts = rng.negative_binomial(2, 0.3, size=(n, len(INPUT_GENES))).astype(np.float32)
    obs = pd.DataFrame(
        {"donor": rng.choice(donors, n), "cell_type": rng.choice(["T", "B"], n), "score": rng.normal(size=n)},
        index=[f"cell{i}" for i in range(n)],
    )
    return ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=INPUT_GENES))


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyInputs:
    root = tmp_path_factory.mktemp("stack-inputs")
    rng = np.random.default_rng(0)
    _cells(rng, 40, ["q"]).write_h5ad(root / "query.h5ad")
    _cells(rng, 30, ["d1", "d2"]).write_h5ad(root / "prompt.h5ad")
    genes = write_gene_list(MODEL_GENES, root / "genes.pkl")
    # The generation checkpoint comes from the real CLI; the embedding one from the same function.
    cli = subprocess.run(
        [sys.executable, "-m", "inference.make_checkpoint", "--gene-list", str(genes),
         "--output", str(root / "icl.ckpt"), "--n-hidden", "4", "--token-dim", "4", "--n-cells", "16",
         "--n-layers", "1", "--n-heads", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=240,
    )
    assert cli.returncode == 0, cli.stderr
    build_checkpoint(MODEL_GENES, root / "base.ckpt", model_class="StateICLModel", **SIZES)
    return TinyInputs(root, root / "query.h5ad", root / "prompt.h5ad", genes, root / "icl.ckpt", root / "base.ckpt")


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())
