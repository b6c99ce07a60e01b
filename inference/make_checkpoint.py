"""Build a small, randomly initialised STACK checkpoint with arc-stack's own classes.

No trained weights can be downloaded on these machines, so tests, the demo and the benchmark use a
checkpoint made here: the model is constructed by arc-stack (``ICL_FinetunedModel`` for in-context
generation, ``StateICLModel`` for embeddings) and saved in the Lightning layout that
``stack.model_loading.load_model_from_checkpoint`` reads::

    {"hyper_parameters": {"model_config": {...}, "stackflows_untrained": True},
     "state_dict": {"model.<key>": tensor, ...}}

The ``stackflows_untrained`` marker is what makes the job's manifest and summary say
``model_trained: false``; released checkpoints do not carry it.

    python -m inference.make_checkpoint --gene-list genes.pkl --output model.ckpt --n-hidden 8
"""

from __future__ import annotations

import argparse
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch

from inference.gene_list import read_gene_list

UNTRAINED_MARKER = "stackflows_untrained"
ModelClass = Literal["ICL_FinetunedModel", "StateICLModel"]

# The released model's sizes (arc-stack 0.1.3 README): 217M parameters with 15012 genes.
RELEASED_SIZE = {"n_hidden": 100, "token_dim": 16, "n_layers": 9, "n_heads": 8, "n_cells": 512}


def write_gene_list(genes: Sequence[str], path: Path) -> Path:
    """Pickle a gene list the way arc-stack's ``load_gene_list`` reads it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump([str(g) for g in genes], fh)
    return path


def build_checkpoint(
    genes: Sequence[str],
    output: Path,
    *,
    model_class: ModelClass = "ICL_FinetunedModel",
    n_hidden: int = 8,
    token_dim: int = 8,
    n_cells: int = 32,
    n_layers: int = 2,
    n_heads: int = 2,
    seed: int = 0,
) -> Path:
    """Construct ``model_class`` with random weights for ``genes`` and save it at ``output`` (.ckpt)."""
    from stack.model_finetune import ICL_FinetunedModel
    from stack.models.core import StateICLModel

    output = Path(output)
    if output.suffix != ".ckpt":
        raise ValueError(f"{output}: arc-stack's loader reads Lightning checkpoints only; name it *.ckpt")
    if (n_hidden * token_dim) % n_heads:
        raise ValueError(
            f"n_hidden*token_dim ({n_hidden}*{token_dim}) must be divisible by n_heads ({n_heads})"
        )
    model_config = {
        "n_genes": len(genes),
        "n_hidden": n_hidden,
        "token_dim": token_dim,
        "n_cells": n_cells,
        "n_layers": n_layers,
        "n_heads": n_heads,
    }
    cls = {"ICL_FinetunedModel": ICL_FinetunedModel, "StateICLModel": StateICLModel}[model_class]
    torch.manual_seed(seed)
    model = cls(**model_config)
    checkpoint = {
        "hyper_parameters": {
            "model_config": model_config,
            "model_class": model_class,
            UNTRAINED_MARKER: True,
        },
        "state_dict": {f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()},
        "epoch": 0,
        "global_step": 0,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, output)
    return output


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gene-list", type=Path, required=True, help="Pickled gene list (or .txt, one per line).")
    parser.add_argument("--output", type=Path, required=True, help="Where to write the .ckpt file.")
    parser.add_argument("--model-class", choices=["ICL_FinetunedModel", "StateICLModel"], default="ICL_FinetunedModel")
    parser.add_argument("--released-size", action="store_true", help="Use the released model's sizes.")
    parser.add_argument("--n-hidden", type=int, default=8)
    parser.add_argument("--token-dim", type=int, default=8)
    parser.add_argument("--n-cells", type=int, default=32, help="Cells per attention window.")
    parser.add_argument("--n-layers", type=int, default=2)
    parser.add_argument("--n-heads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sizes = dict(
        n_hidden=args.n_hidden, token_dim=args.token_dim, n_cells=args.n_cells,
        n_layers=args.n_layers, n_heads=args.n_heads,
    )
    if args.released_size:
        sizes = dict(RELEASED_SIZE)
    genes = read_gene_list(args.gene_list)
    path = build_checkpoint(genes, args.output, model_class=args.model_class, seed=args.seed, **sizes)
    print(f"wrote untrained {args.model_class} ({len(genes)} genes, {sizes}) to {path}")


if __name__ == "__main__":
    main()
