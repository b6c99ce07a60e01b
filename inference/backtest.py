"""The backtest: predictions of real held-out cells, scored by Arc's cell-eval.

The prompt's real cells of the query type under a treated context are held out of that context's
prompt (the model never sees them); the job predicts the query cells under that context and
cell-eval compares the two, each against its own control arm:

- real: the query input's cells (control) + the held-out real cells per context;
- pred: the control arm (synthetic control, or the query input when there is none) + the
  generated cells per context.

Both sides are log1p-CPM (the same normalisation as the DE). cell-eval's "minimal" profile is used:
it runs on a few dozen cells without a GPU (the full profile adds clustering and DE-ranking metrics
that need far more cells per context).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from importlib.metadata import version
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from inference.contract import BacktestContext, BacktestSummary

log = logging.getLogger("inference.backtest")

PROFILE = "minimal"
QUERY_INPUT_LABEL = "__query_input__"  # cell-eval's control label when there is no control context

Matrix = np.ndarray | sp.spmatrix


def _log1p_cpm(counts: Matrix) -> sp.csr_matrix:
    csr = sp.csr_matrix(counts, dtype=np.float64)
    lib = np.maximum(np.asarray(csr.sum(axis=1)).ravel(), 1.0)
    csr = sp.csr_matrix(sp.diags(1e6 / lib) @ csr)
    np.log1p(csr.data, out=csr.data)
    return csr.astype(np.float32)


def _arm_data(arms: Mapping[str, Matrix], genes: Sequence[str], column: str) -> ad.AnnData:
    labels = [label for label, m in arms.items() for _ in range(m.shape[0])]
    X = sp.vstack([_log1p_cpm(m) for m in arms.values()], format="csr")
    obs = pd.DataFrame({column: pd.Categorical(labels)}, index=[f"c{i}" for i in range(len(labels))])
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[str(g) for g in genes]))


def score_backtest(
    *,
    real_control: Matrix,
    held_out: Mapping[str, Matrix],
    pred_control: Matrix,
    predicted: Mapping[str, Matrix],
    genes: Sequence[str],
    cell_type_column: str,
    cell_type: str,
    control_label: str | None,
    workdir: Path,
) -> BacktestSummary:
    """cell-eval metrics per context that has held-out cells; matrices are raw counts, cells x ``genes``.

    ``control_label``: the control context's name (synthetic control), None for query-as-control.
    cell-eval's files go under ``workdir`` (the job's temp dir).
    """
    from cell_eval import MetricsEvaluator

    base = BacktestSummary(cell_type_column=cell_type_column, cell_type=cell_type,
                           held_out_cells=int(sum(m.shape[0] for m in held_out.values())))
    contexts = [v for v, m in held_out.items() if m.shape[0] > 0]
    if not contexts:
        return base.model_copy(update={"not_assessed": (
            f"no prompt cells with {cell_type_column} == {cell_type!r} under a treated context to hold out")})
    control = control_label or QUERY_INPUT_LABEL
    column = "context"
    real = _arm_data({control: real_control, **{v: held_out[v] for v in contexts}}, genes, column)
    pred = _arm_data({control: pred_control, **{v: predicted[v] for v in contexts}}, genes, column)
    tool = f"cell-eval {version('cell-eval')}"
    try:
        evaluator = MetricsEvaluator(adata_pred=pred, adata_real=real, control_pert=control, pert_col=column,
                                     num_threads=1, outdir=str(workdir / "cell-eval"))
        results, _ = evaluator.compute(profile=PROFILE, write_csv=False)
    except Exception as exc:  # a metric library failing must not lose the generated predictions
        log.warning("cell-eval failed on the backtest: %s", exc)
        return base.model_copy(update={"tool": tool, "not_assessed": f"cell-eval failed: {type(exc).__name__}: {exc}"[:500]})
    rows = {str(r["perturbation"]): r for r in results.to_dicts()}
    scored = [
        BacktestContext(
            split_value=v, real_cells=int(held_out[v].shape[0]), predicted_cells=int(predicted[v].shape[0]),
            metrics={k: float(x) for k, x in rows.get(v, {}).items()
                     if k != "perturbation" and isinstance(x, (int, float)) and math.isfinite(x)},
        )
        for v in contexts
    ]
    log.info("backtest: %d context(s), %d held-out cells, %s profile %r", len(scored), base.held_out_cells, tool, PROFILE)
    return base.model_copy(update={"contexts": scored, "tool": f"{tool} (profile {PROFILE})"})
