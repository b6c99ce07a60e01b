"""How the STACK job's memory and output time grow with the query: 1k, 8k and 32k query cells.

Each size runs the real job (``python -m inference.stack_job``, CPU) in its own process on synthetic
sparse counts with a reduced, randomly initialised model built with arc-stack's own classes (as the
tests do); its manifest gives the peak resident set and the timings. Printed: peak RSS and output
time per size, a fitted growth (MB per 1k query cells, and the log-log exponent), the check
"peak at the largest size <= 1.5 x peak at the smallest + the largest sparse input's size", the
predictions matrix written with gzip, lzf and no compression, and a memory model for the released
gene count (15012) that says where the default machine types break, now and before this change.

    python -m benchmarks.scale                       # ~3 min on 2 cores (300 genes)
    python -m benchmarks.scale --sizes 1000 4000     # quicker

Inputs and model are synthetic and untrained: the figures measure memory and time, not biology.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REDUCED = {"n_hidden": 8, "token_dim": 4, "n_layers": 1, "n_heads": 2, "n_cells": 64}
RELEASED_GENES = 15012
RELEASED_N_CELLS = 512
GIB = 2**30
# Default machine types: (name, GPU memory GiB, host memory GiB).
MACHINES = [("g2-standard-8 + L4", 24, 32), ("a2-highgpu-1g + A100 40GB", 40, 85)]


def gene_means(n_genes: int, seed: int) -> np.ndarray:
    """Per-gene means over three orders of magnitude; about 15% of values non-zero, like scRNA-seq."""
    return np.exp(np.random.default_rng(seed).normal(-3.0, 1.6, size=n_genes))


def write_cells(path: Path, n: int, genes: list[str], means: np.ndarray, contexts: list[str], seed: int) -> int:
    """Poisson counts in row blocks (never the dense matrix at once); returns the stored non-zeros."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    blocks = []
    for start in range(0, n, 2000):
        rows = min(2000, n - start)
        scale = rng.lognormal(0, 0.3, size=(rows, 1))
        blocks.append(sp.csr_matrix(rng.poisson(means[None, :] * scale).astype(np.float32)))
    X = sp.vstack(blocks, format="csr")
    obs = pd.DataFrame({"context": rng.choice(contexts, n)}, index=[f"cell{i}" for i in range(n)])
    ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=genes)).write_h5ad(path)
    return int(X.nnz)


def sparse_mb(nnz: int, rows: int) -> float:
    """What the job holds for a float32 CSR: values + int32 column indices + int64 row pointers."""
    return (nnz * 8 + (rows + 1) * 8) / 2**20


def run_size(work: Path, n: int, genes: list[str], means: np.ndarray, args) -> dict:
    query = work / f"query{n}.h5ad"
    nnz = write_cells(query, n, genes, means, ["q"], seed=n)
    spec = {
        "mode": "generate", "query_uri": str(query), "prompt_uri": str(work / "prompt.h5ad"),
        "checkpoint_uri": str(work / "model.ckpt"), "gene_list_uri": str(work / "genes.pkl"),
        "split_column": "context", "control_value": "ctrl", "num_steps": args.steps, "seed": 1,
        "batch_size": args.batch_size, "output_prefix": str(work / f"out{n}"),
    }
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "inference.stack_job", "--spec-json", json.dumps(spec)],
                          capture_output=True, text=True, check=False, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"the job failed at {n} query cells:\n{proc.stderr[-4000:]}")
    manifest = json.loads((work / f"out{n}" / "manifest.json").read_text())
    t = manifest["timings_s"]
    return {
        "cells": n, "input_nnz": nnz, "input_sparse_mb": round(sparse_mb(nnz, n), 1),
        "peak_rss_mb": manifest["peak_memory_mb"], "wall_s": round(wall, 1),
        "write_predictions_s": t.get("write_predictions_s"), "write_s": t["write_s"],
        "compute_s": t["compute_s"], "de_s": t.get("de_s"),
        "predictions_mb": round((work / f"out{n}" / "predictions.h5ad").stat().st_size / 2**20, 1),
    }


def compression_table(predictions: Path, n_genes: int) -> list[dict]:
    """The same predictions matrix written streamed with each compression: seconds and MB."""
    import anndata as ad

    from inference.outputs import PredictionsWriter

    pred = ad.read_h5ad(predictions)
    rows = []
    for compression in ("gzip", "lzf", "none"):
        out = predictions.with_name(f"pred-{compression}.h5ad")
        start = time.perf_counter()
        writer = PredictionsWriter(out, n_genes, compression=compression)
        writer.append(pred.X)
        writer.finish(pred.obs, pred.var, dict(pred.uns))
        rows.append({"compression": compression, "write_s": round(time.perf_counter() - start, 2),
                     "mb": round(out.stat().st_size / 2**20, 1)})
        out.unlink()
    return rows


def fit(results: list[dict]) -> dict:
    cells = np.array([r["cells"] for r in results], dtype=float)
    peak = np.array([r["peak_rss_mb"] for r in results], dtype=float)
    slope, intercept = np.polyfit(cells / 1000, peak, 1)
    exponent = np.polyfit(np.log(cells), np.log(peak), 1)[0] if len(cells) > 1 else float("nan")
    return {"mb_per_1k_cells": round(float(slope), 2), "base_mb": round(float(intercept), 1),
            "loglog_exponent": round(float(exponent), 3)}


STATE_COPIES = 6  # sparse query-sized copies alive at the peak: input, state, fresh parts + stack, [old; new], next state
OBS_BYTES_PER_CELL = 1024  # the obs frames (string index, query_cell) of every context, per query cell


def host_bytes_per_cell(values_per_cell: float) -> float:
    """The model's host bytes per query cell: the sparse state's copies (float32 + int32) plus obs."""
    return STATE_COPIES * values_per_cell * 8 + OBS_BYTES_PER_CELL


def memory_model(base_mb: float, batch_size: int, contexts: int) -> None:
    """Where the default machines break at 15012 genes: before (dense) and now (sparse), by formula."""
    genes = RELEASED_GENES
    density = 0.10  # a typical scRNA-seq count matrix on 15k genes: ~1500 genes detected per cell
    per_cell_now = host_bytes_per_cell(genes * density)
    nnz_bytes = genes * density * 12  # predictions CSR per cell as torch hands them over (int64 indices)
    window = batch_size * RELEASED_N_CELLS * genes * 4  # one batch of windows, dense fp32, on the GPU
    print(f"\nmemory model at {genes} genes, density {density:.0%}, batch_size {batch_size}, {contexts} contexts:")
    print(f"  before: host ~ base + 2 x cells x genes x 4 B (dense align) + {contexts} contexts' CSR + vstack copy; "
          "GPU ~ 3 query-sized dense buffers (query, state, fresh) x genes x 4 B")
    print(f"  now:    host ~ base ({base_mb:.0f} MB here) + {STATE_COPIES} sparse copies of the query state + obs = "
          f"{per_cell_now / 2**10:.0f} KiB per query cell; DE chunks <= 32 MiB per arm")
    print(f"          GPU ~ model + one batch of windows ({window / GIB:.2f} GiB dense fp32, x ~6 for "
          "log1p, NB mean/theta and samples) + attention: independent of the query's size")
    for name, gpu_gib, host_gib in MACHINES:
        usable = host_gib * GIB * 0.85 - base_mb * 2**20
        before_gpu = (gpu_gib * GIB * 0.9) / (3 * genes * 4)
        before_host = usable / (2 * genes * 4 + contexts * 2 * nnz_bytes)
        now_host = usable / per_cell_now
        gpu_batch = gpu_gib * GIB * 0.9 / (6 * window / batch_size)
        print(f"  {name}: before, GPU full near {before_gpu / 1e3:.0f}k query cells, host near "
              f"{before_host / 1e3:.0f}k; now host near {now_host / 1e3:.0f}k query cells (sparse state), "
              f"GPU never from cells (batch_size up to ~{gpu_batch:.0f} windows fits)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 8000, 32000])
    parser.add_argument("--genes", type=int, default=300)
    parser.add_argument("--prompt-cells", type=int, default=300)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)

    from inference.make_checkpoint import build_checkpoint, write_gene_list

    print(f"load average at start: {os.getloadavg()}")
    genes = [f"GENE{i}" for i in range(args.genes)]
    means = gene_means(args.genes, seed=0)
    with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
        work = Path(tmp)
        write_gene_list(genes, work / "genes.pkl")
        build_checkpoint(genes, work / "model.ckpt", seed=0, **REDUCED)
        write_cells(work / "prompt.h5ad", args.prompt_cells, genes, means, ["ctrl", "drug"], seed=1)
        results = []
        for n in sorted(args.sizes):
            results.append(run_size(work, n, genes, means, args))
            print(json.dumps(results[-1]), flush=True)
        growth = fit(results)
        small, large = results[0], results[-1]
        bound = 1.5 * small["peak_rss_mb"] + large["input_sparse_mb"]
        ok = large["peak_rss_mb"] <= bound
        print(f"\ngrowth: {json.dumps(growth)}")
        print(f"check: peak at {large['cells']} cells {large['peak_rss_mb']:.0f} MB <= 1.5 x {small['peak_rss_mb']:.0f} MB "
              f"+ sparse input {large['input_sparse_mb']:.0f} MB = {bound:.0f} MB: {'PASS' if ok else 'FAIL'}")
        dense_mb = large["cells"] * args.genes * 4 / 2**20
        print(f"(the dense query alone would be {dense_mb:.0f} MB at {large['cells']} cells x {args.genes} genes)")
        print(f"\ncompression of predictions.h5ad ({large['cells']} cells x 2 contexts x {args.genes} genes):")
        for row in compression_table(work / f"out{large['cells']}" / "predictions.h5ad", args.genes):
            print(f"  {row['compression']:>5}: {row['write_s']:6.2f} s  {row['mb']:8.1f} MB")
        values_per_cell = large["input_nnz"] / large["cells"]
        measured = growth["mb_per_1k_cells"] * 2**20 / 1000
        print(f"\nmeasured growth {measured / 2**10:.1f} KiB per query cell at {values_per_cell:.0f} stored values per "
              f"cell; the model below predicts {host_bytes_per_cell(values_per_cell) / 2**10:.1f} KiB there")
        memory_model(growth["base_mb"], args.batch_size, contexts=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
