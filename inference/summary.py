"""What the agent and the grounding read about a run: per treated context, its DE in brief.

Everything here is read off the DE table (inference.de, one row per context and gene): counts of
significant genes (q < DE_Q_THRESHOLD), the mean |LFC| and the top genes each way.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from inference.contract import DE_Q_THRESHOLD, GeneChange, Reference, SplitSummary

TOP_GENES = 10


def _gene_change(row) -> GeneChange:
    return GeneChange(
        gene=str(row.gene), mean_treated=float(row.mean_treated), mean_reference=float(row.mean_reference),
        log_fold_change=float(row.log_fold_change), p_value=float(row.p_value), q_value=float(row.q_value),
        fraction_same_direction=float(row.fraction_same_direction),
    )


def top_genes(de: pd.DataFrame, direction: int, n: int = TOP_GENES) -> list[GeneChange]:
    """Genes moving ``direction`` (+1 up, -1 down): significant ones first by q then |LFC|, then
    the largest effects (their q says they are not significant), so a null run still shows its top."""
    side = de[np.sign(de["log_fold_change"]) == direction].assign(_abs=lambda f: -f["log_fold_change"].abs())
    significant = side["q_value"] < DE_Q_THRESHOLD
    rest = side[~significant].sort_values(["_abs", "q_value", "gene"])
    significant = side[significant].sort_values(["q_value", "_abs", "gene"])
    return [_gene_change(r) for r in pd.concat([significant, rest]).head(n).itertuples()]


def split_summary(de: pd.DataFrame, *, cells: int, reference_value: str | None = None) -> SplitSummary:
    """One treated context's summary from its rows of the DE table."""
    if de["split_value"].nunique() != 1:
        raise ValueError("split_summary reads the rows of one context")
    significant = de["q_value"] < DE_Q_THRESHOLD
    reference: Reference = de["reference"].iloc[0]
    return SplitSummary(
        split_value=str(de["split_value"].iloc[0]),
        cells=int(cells),
        reference=reference,
        reference_value=reference_value,
        test=str(de["test"].iloc[0]),
        genes_tested=len(de),
        significant_up=int((significant & (de["log_fold_change"] > 0)).sum()),
        significant_down=int((significant & (de["log_fold_change"] < 0)).sum()),
        mean_shift=float(de["log_fold_change"].abs().mean()) if len(de) else 0.0,
        top_up=top_genes(de, +1),
        top_down=top_genes(de, -1),
    )
