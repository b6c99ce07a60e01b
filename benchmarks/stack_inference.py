"""Our STACK job vs arc-stack's stock ``generate()``: same inputs, same seed, one run.

Each side runs in its own process (so peak memory is its own): the baseline calls
``stack.cli.generation.generate(...)`` exactly as its CLI does (fp32; ``num_workers=0``); ours runs
the real job (``inference.stack_job.run_job``) for each precision asked. Both are timed end to end
from files to predictions in memory (model load and input reading included; our output writing is
excluded since the stock function writes nothing). Printed per precision: cell-steps/s and the ratio
to the baseline, peak memory, whether fp32 equals the baseline bit for bit, and the correlation of
per-gene means of the predicted counts with the baseline's.

    python -m benchmarks.stack_inference                    # CPU, reduced model size
    python -m benchmarks.stack_inference --released-size --query-cells 4096   # on a GPU

Inputs are synthetic (negative-binomial counts) and the checkpoint is random (untrained): the
figures measure speed and agreement, not biology.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REDUCED = {"n_genes": 2000, "n_hidden": 32, "token_dim": 8, "n_layers": 3, "n_heads": 4, "n_cells": 128}
RELEASED = {"n_genes": 15012, "n_hidden": 100, "token_dim": 16, "n_layers": 9, "n_heads": 8, "n_cells": 512}


def make_inputs(workdir: Path, sizes: dict, query_cells: int, prompt_cells: int, seed: int) -> dict:
    """Gene list, query and prompt h5ad (two contexts), random ICL_FinetunedModel checkpoint."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    from inference.make_checkpoint import build_checkpoint, write_gene_list

    rng = np.random.default_rng(seed)
    genes = [f"GENE{i}" for i in range(sizes["n_genes"])]
    # Gene-specific means spanning three orders of magnitude, like real expression.
    gene_mean = np.exp(rng.normal(-1.0, 1.5, size=len(genes)))

    def cells(n: int, contexts: list[str]) -> ad.AnnData:
        scale = rng.lognormal(0, 0.3, size=(n, 1))
        counts = rng.poisson(gene_mean[None, :] * scale).astype(np.float32)
        obs = pd.DataFrame({"context": rng.choice(contexts, n)}, index=[f"cell{i}" for i in range(n)])
        return ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=genes))

    paths = {
        "genes": write_gene_list(genes, workdir / "genes.pkl"),
        "query": workdir / "query.h5ad",
        "prompt": workdir / "prompt.h5ad",
        "checkpoint": workdir / "model.ckpt",
    }
    cells(query_cells, ["q"]).write_h5ad(paths["query"])
    cells(prompt_cells, ["ctxA", "ctxB"]).write_h5ad(paths["prompt"])
    model_sizes = {k: v for k, v in sizes.items() if k != "n_genes"}
    build_checkpoint(genes, paths["checkpoint"], seed=seed, **model_sizes)
    return {k: str(v) for k, v in paths.items()}


def _peaks() -> dict:
    import torch

    out = {"host_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def run_stock(args: argparse.Namespace, paths: dict, out: Path) -> dict:
    from stack.cli.generation import generate

    start = time.perf_counter()
    generations = generate(
        paths["checkpoint"], paths["prompt"], paths["query"], paths["genes"],
        split_column="context", mode="mdm", num_steps=args.steps, batch_size=args.batch_size,
        num_workers=0, random_seed=args.seed,
    )
    _sync()
    wall = time.perf_counter() - start
    X = np.concatenate([generations[k].X.toarray() for k in sorted(generations)], axis=0)
    np.save(out / "stock.npy", X)
    return {"side": "stock", "wall_s": wall, **_peaks()}


def run_ours(args: argparse.Namespace, paths: dict, out: Path, precision: str) -> dict:
    import anndata as ad

    from inference.contract import PREDICTIONS_FILE, StackJobSpec
    from inference.stack_job import run_job

    prefix = out / f"job-{precision}"
    spec = StackJobSpec(
        mode="generate", query_uri=paths["query"], prompt_uri=paths["prompt"],
        checkpoint_uri=paths["checkpoint"], gene_list_uri=paths["genes"], split_column="context",
        num_steps=args.steps, seed=args.seed, batch_size=args.batch_size, chunk_size=args.chunk_size,
        precision=precision, output_prefix=str(prefix),
    )
    manifest = run_job(spec)
    pred = ad.read_h5ad(prefix / PREDICTIONS_FILE)
    order = np.argsort(pred.obs["split_value"].astype(str).to_numpy(), kind="stable")
    np.save(out / f"ours-{precision}.npy", pred.X[order].toarray())
    t = manifest.timings_s
    return {
        "side": f"ours-{precision}", "wall_s": t["total_s"] - t["write_s"], "compute_s": t["compute_s"],
        "device": manifest.device, **_peaks(),
    }


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def child(args: argparse.Namespace) -> None:
    """One side, in its own process; prints one JSON line."""
    import stack.cli.generation
    import stack.model_loading  # noqa: F401  (imports are not part of either side's time)

    stack.cli.generation._ensure_deps()
    paths = json.loads(Path(args.workdir, "paths.json").read_text())
    out = Path(args.workdir)
    result = run_stock(args, paths, out) if args.side == "stock" else run_ours(args, paths, out, args.side)
    print("RESULT " + json.dumps(result), flush=True)


def gene_mean_corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.mean(axis=0), b.mean(axis=0))[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--released-size", action="store_true", help="15012 genes, 9 layers, 512-cell windows.")
    parser.add_argument("--query-cells", type=int, default=None)
    parser.add_argument("--prompt-cells", type=int, default=None)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "tf32", "bf16"], choices=["fp32", "tf32", "bf16"])
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--side", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        child(args)
        return

    sizes = RELEASED if args.released_size else REDUCED
    query_cells = args.query_cells or (2048 if args.released_size else 512)
    prompt_cells = args.prompt_cells or (1024 if args.released_size else 256)
    with tempfile.TemporaryDirectory(prefix="stack-bench-") as tmp:
        workdir = Path(tmp)
        t0 = time.perf_counter()
        paths = make_inputs(workdir, sizes, query_cells, prompt_cells, args.seed)
        (workdir / "paths.json").write_text(json.dumps(paths))
        print(f"inputs: {query_cells} query cells, {prompt_cells} prompt cells (2 contexts), sizes {sizes}, "
              f"{args.steps} steps, batch {args.batch_size}, seed {args.seed} ({time.perf_counter() - t0:.1f} s)")
        results = {}
        for side in ["stock", *args.precisions]:
            cmd = [sys.executable, "-m", "benchmarks.stack_inference", "--workdir", tmp, "--side", side,
                   "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                   "--chunk-size", str(args.chunk_size), "--seed", str(args.seed)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not line:
                print(f"{side}: failed (exit {proc.returncode})\n{proc.stderr[-3000:]}")
                continue
            results[side] = json.loads(line[0][len("RESULT "):])
        report(results, workdir, query_cells, args.steps)


def report(results: dict, workdir: Path, query_cells: int, steps: int) -> None:
    cell_steps = query_cells * 2 * steps  # two contexts
    if "stock" not in results:
        print("baseline failed; no ratios")
        return
    stock = results["stock"]
    base = np.load(workdir / "stock.npy")
    base_rate = cell_steps / stock["wall_s"]
    mem = lambda r: f"host {r['host_peak_mb']:.0f} MB" + (f", GPU {r['gpu_peak_mb']:.0f} MB" if "gpu_peak_mb" in r else "")
    print(f"\n{'side':<12} {'wall s':>8} {'cell-steps/s':>13} {'ratio':>6}  {'exact':>5}  {'gene-mean r':>11}  peak memory")
    print(f"{'stock fp32':<12} {stock['wall_s']:>8.2f} {base_rate:>13.1f} {1.0:>6.2f}  {'-':>5}  {'-':>11}  {mem(stock)}")
    for side, r in results.items():
        if side == "stock":
            continue
        ours = np.load(workdir / f"ours-{side}.npy")
        rate = cell_steps / r["wall_s"]
        exact = "yes" if ours.shape == base.shape and np.array_equal(ours, base) else "no"
        print(f"{'ours ' + side:<12} {r['wall_s']:>8.2f} {rate:>13.1f} {rate / base_rate:>6.2f}  {exact:>5}  "
              f"{gene_mean_corr(ours, base):>11.5f}  {mem(r)}  (compute {r['compute_s']:.2f} s on {r['device']})")


if __name__ == "__main__":
    main()
