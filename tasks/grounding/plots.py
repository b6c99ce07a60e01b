"""The grounding's figures: a volcano plot per treated context, a bar chart of the top gene sets, and
the scores across the closed loop's rounds.

Both are drawn from the figures a reviewer can recompute (the job's ``de.parquet`` and the
evaluation's enrichment rows), never from anything a model said. Each returns PNG bytes, so the
report can store them beside itself and embed the same bytes in its HTML.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol, get_args

import numpy as np
import pandas as pd

from inference.contract import DE_Q_THRESHOLD
from tasks.grounding.models import ComponentName, EnrichmentRow
from tasks.report_text import plain

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# -log10 of a q of 0 is infinite; a q this small is drawn at the plot's top instead.
_SMALLEST_Q = 1e-300
_UP, _DOWN, _OTHER = "#c0392b", "#2c7fb8", "#b0b0b0"


def neg_log10(values: Iterable[float]) -> np.ndarray:
    """-log10 of q-values, a q of 0 drawn as the smallest positive one (never infinite)."""
    return -np.log10(np.clip(np.asarray(list(values), dtype=float), _SMALLEST_Q, 1.0))


def plain_label(text: str, limit: int = 60) -> str:
    """Data text as matplotlib shows it literally: ``$`` would start mathtext (and a bad formula raises)."""
    text = " ".join(plain(str(text)).split())
    return (text[: limit - 1] + "…" if len(text) > limit else text).replace("$", r"\$")


def headless_pyplot():
    """matplotlib.pyplot on the headless backend, imported when a figure is drawn (it costs ~0.5 s)."""
    import matplotlib

    matplotlib.use("Agg")  # workers and CI have no display
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Figure, target: str | Path | BinaryIO) -> None:
    """Lay the figure out, write it as a PNG and close it, drawing it once.

    After ``tight_layout`` a figure keeps a placeholder layout engine, for which ``savefig`` draws it
    once more (without rendering) before the drawing it writes. Without the engine the bytes are the
    same and the save takes about a tenth less CPU time.
    """
    fig.tight_layout()
    fig.set_layout_engine(None)  # the placeholder's removal ("none" would keep it)
    fig.savefig(target, format="png", dpi=110)
    headless_pyplot().close(fig)


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    save_png(fig, buffer)
    return buffer.getvalue()


def volcano_png(
    de: pd.DataFrame,
    split_value: str,
    *,
    expected_up: Sequence[str] = (),
    expected_down: Sequence[str] = (),
    q_threshold: float = DE_Q_THRESHOLD,
) -> bytes:
    """One context's volcano: x = log fold change, y = -log10 q, the q threshold as a line,
    genes the expectations name ringed and labelled (triangle up / down for the direction expected)."""
    rows = de[de["split_value"].astype(str) == split_value]
    lfc = rows["log_fold_change"].to_numpy(dtype=float)
    y = neg_log10(rows["q_value"])
    significant = rows["q_value"].to_numpy(dtype=float) < q_threshold
    colour = np.where(significant & (lfc > 0), _UP, np.where(significant & (lfc < 0), _DOWN, _OTHER))
    fig, ax = headless_pyplot().subplots(figsize=(5.2, 4.4))
    ax.scatter(lfc, y, s=6, c=colour, alpha=0.7, linewidths=0)
    ax.axhline(-np.log10(q_threshold), color="black", linewidth=0.8, linestyle="--", label=f"q = {q_threshold:g}")
    ax.axvline(0, color="grey", linewidth=0.5)
    genes = rows["gene"].astype(str).to_numpy()
    for expected, marker, label in ((expected_up, "^", "expected up"), (expected_down, "v", "expected down")):
        mark = np.isin(genes, list(expected))
        if mark.any():
            ax.scatter(lfc[mark], y[mark], s=40, marker=marker, facecolors="none", edgecolors="black", label=label)
            for gene, gx, gy in zip(genes[mark], lfc[mark], y[mark]):
                ax.annotate(plain_label(gene, 20), (gx, gy), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_title(f"context: {plain_label(split_value)}", fontsize=9)
    ax.set_xlabel("log fold change (log1p CPM)")
    ax.set_ylabel("-log10 q (BH)")
    ax.legend(fontsize=7, loc="upper left")
    return _png(fig)


def enrichment_bar_png(rows: Sequence[EnrichmentRow], *, top: int = 15, q_threshold: float = DE_Q_THRESHOLD) -> bytes:
    """The ``top`` sets by q as horizontal bars of -log10 q, coloured by direction; an expected set
    is starred, and the q threshold is a line."""
    best = sorted(rows, key=lambda r: (r.q_value, -r.overlap))[:top][::-1]  # best at the top of the chart
    fig, ax = headless_pyplot().subplots(figsize=(7.0, 0.32 * max(len(best), 3) + 1.2))
    labels = [
        f"{'* ' if r.expected else ''}{plain_label(r.name, 50)} ({plain_label(r.split_value, 20)}, {r.direction})"
        for r in best
    ]
    ax.barh(range(len(best)), neg_log10(r.q_value for r in best), color=[_UP if r.direction == "up" else _DOWN for r in best])
    ax.set_yticks(range(len(best)), labels, fontsize=7)
    ax.axvline(-np.log10(q_threshold), color="black", linewidth=0.8, linestyle="--")
    ax.set_xlabel("-log10 q (BH across sets)   * expected set")
    ax.set_title("top gene sets", fontsize=9)
    return _png(fig)


class ScoredRound(Protocol):
    """What the trajectory reads of a round (``tasks.report.RoundRow`` has it)."""

    k: int
    components: Mapping[str, float | None]
    composite: float | None


def trajectory_series(rows: Sequence[ScoredRound]) -> dict[str, np.ndarray]:
    """Each score across rounds, the components any round assessed then ``composite``: a round a score
    was not assessed in is NaN, which matplotlib leaves as a gap (never drawn as a 0)."""

    def values(scores: Iterable[float | None]) -> np.ndarray:
        return np.array([np.nan if v is None else float(v) for v in scores], dtype=float)

    series = {name: values(r.components.get(name) for r in rows) for name in get_args(ComponentName)}
    series = {name: v for name, v in series.items() if not np.isnan(v).all()}
    series["composite"] = values(r.composite for r in rows)
    return series


def trajectory_png(rows: Sequence[ScoredRound], *, best_round: int | None = None) -> bytes:
    """The composite (bold) and each component (thin) across rounds, 0-10; a round a score could
    not be assessed in is a gap in its line (markers show a lone point), and the best round is marked."""
    ks = [r.k for r in rows]
    fig, ax = headless_pyplot().subplots(figsize=(6.0, 3.8))
    for name, values in trajectory_series(rows).items():
        if name == "composite":
            ax.plot(ks, values, marker="o", markersize=6, linewidth=2.5, color="black", label="composite", zorder=1)
        else:
            ax.plot(ks, values, marker="o", markersize=3, linewidth=1, alpha=0.8, label=name.replace("_", " "), zorder=2)
    if best_round in ks:
        ax.axvline(best_round, color="#27ae60", linewidth=1, linestyle=":", label=f"best round ({best_round})")
    ax.set_xticks(ks)
    ax.set_xlim(min(ks, default=1) - 0.3, max(ks, default=1) + 0.3)
    ax.set_ylim(0, 10.3)
    ax.set_xlabel("round")
    ax.set_ylabel("score (0-10)")
    ax.set_title("scores across rounds (a gap: not assessed)", fontsize=9)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _png(fig)
