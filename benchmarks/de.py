"""The DE step's cost against the generation it describes, measured in the same job.

Runs the real job (``inference.stack_job.run_job``) on the inputs of ``benchmarks.stack_inference``
(synthetic counts, random checkpoint, two contexts ``ctxA``/``ctxB``) twice in one process:

- synthetic control (``control_value="ctxA"``): ``ctxB`` is generated, the query cells are also
  generated under ``ctxA``, and the DE is paired by query cell (scipy Wilcoxon signed-rank);
- query-as-control (no control): both contexts against the query input, unpaired (pdex's
  Mann-Whitney U; its numba kernels compile on the first call of each process, which is counted,
  and measured on its own in a fresh process so the per-job fixed cost shows).

Printed per job: generation time (``compute_s``), DE time (``de_s``), their ratio (target <= 0.1)
and the genes tested. Both come from the job's own manifest timings.

    python -m benchmarks.de                  # CPU, reduced model size (2000 genes)
    python -m benchmarks.de --query-cells 2048 --steps 10
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.stack_inference import REDUCED, make_inputs

TARGET = 0.1

# pdex's import and first call in a fresh process on a tiny matrix: numba compiles its Mann-Whitney
# kernels (numba_mwu does not cache them), a fixed cost per job whatever the data size.
COMPILE_PROBE = """
import time, numpy as np, pandas as pd, anndata as ad
t0 = time.perf_counter()
from pdex import pdex
a = ad.AnnData(X=np.log1p(np.arange(40.0).reshape(8, 5)),
               obs=pd.DataFrame({"arm": ["t"] * 4 + ["r"] * 4}, index=[str(i) for i in range(8)]))
pdex(a, groupby="arm", mode="ref", reference="r", is_log1p=True, threads=0)
print(time.perf_counter() - t0)
"""


def pdex_compile_s() -> float:
    proc = subprocess.run([sys.executable, "-c", COMPILE_PROBE], capture_output=True, text=True, check=True)
    return float(proc.stdout.strip().splitlines()[-1])


def run(paths: dict, prefix: Path, args: argparse.Namespace, control: str | None) -> dict:
    import pandas as pd

    from inference.contract import DE_FILE, StackJobSpec
    from inference.stack_job import run_job

    spec = StackJobSpec(
        mode="generate", query_uri=paths["query"], prompt_uri=paths["prompt"], checkpoint_uri=paths["checkpoint"],
        gene_list_uri=paths["genes"], split_column="context", control_value=control, num_steps=args.steps,
        seed=args.seed, batch_size=args.batch_size, chunk_size=args.chunk_size, device=args.device,
        output_prefix=str(prefix),
    )
    manifest = run_job(spec)
    de = pd.read_parquet(prefix / DE_FILE)
    t = manifest.timings_s
    return {"generation_s": t["compute_s"], "de_s": t["de_s"], "rows": len(de),
            "contexts": de["split_value"].nunique(), "device": manifest.device, "test": de["test"].iloc[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--query-cells", type=int, default=512)
    parser.add_argument("--prompt-cells", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="de-bench-") as tmp:
        workdir = Path(tmp)
        t0 = time.perf_counter()
        paths = make_inputs(workdir, REDUCED, args.query_cells, args.prompt_cells, args.seed)
        print(f"inputs: {args.query_cells} query cells, {args.prompt_cells} prompt cells (contexts ctxA, ctxB), "
              f"sizes {REDUCED}, {args.steps} steps, seed {args.seed} ({time.perf_counter() - t0:.1f} s)")
        rows = {
            "synthetic control (paired)": run(paths, workdir / "paired", args, control="ctxA"),
            "query-as-control (unpaired)": run(paths, workdir / "unpaired", args, control=None),
        }
    print(f"\n{'job':<28} {'generation s':>12} {'DE s':>7} {'DE/gen':>7}  {'genes x contexts':>16}  test")
    worst = 0.0
    for name, r in rows.items():
        ratio = r["de_s"] / r["generation_s"]
        worst = max(worst, ratio)
        print(f"{name:<28} {r['generation_s']:>12.2f} {r['de_s']:>7.2f} {ratio:>7.3f}  "
              f"{r['rows'] // r['contexts']:>7} x {r['contexts']:<6}  {r['test']} ({r['device']})")
    compile_s = pdex_compile_s()
    unpaired = rows["query-as-control (unpaired)"]
    print(f"\npdex's one-off import + numba compile in a fresh process: {compile_s:.2f} s; unpaired DE without it: "
          f"{max(unpaired['de_s'] - compile_s, 0):.2f} s, ratio {max(unpaired['de_s'] - compile_s, 0) / unpaired['generation_s']:.3f}")
    print(f"worst DE/generation ratio {worst:.3f} (target <= {TARGET}): {'met' if worst <= TARGET else 'NOT met'}")


if __name__ == "__main__":
    main()
