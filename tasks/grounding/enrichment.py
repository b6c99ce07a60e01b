"""Over-representation of the pack's gene sets among each treated context's up and down DE genes.

The universe is the DE background (the genes the model and the input both have, i.e. the genes
tested), never the genome: a set's genes the model never saw can be neither DE nor not DE. Sets are
cut to the background and tested if they keep ``min_set_size``..``max_set_size`` genes there (a set
named in the expectations or a claim is tested at any size from ``min_set_size``). BH runs across
the sets of one context and direction.

decoupler's ORA (``dc.mt.ora``) does the test: its feature-specific background (``n_bg=None``) is
the columns of the matrix, so a matrix over the background genes makes the background the universe.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from clients.grounding_settings import GroundingSettings
from inference.contract import DE_Q_THRESHOLD
from tasks.grounding.models import Direction, EnrichmentRow
from tasks.grounding.pack import GeneSet, KnowledgePack

DIRECTIONS: tuple[Direction, Direction] = ("up", "down")
# What the grounding imports after the job that the flow has not: read_de_table's parquet reader, the
# BH q-values, the ORA. Imported while the job runs (start_importing_decoupler).
_GROUNDING_IMPORTS = ("pyarrow.parquet", "pandas.io.parquet", "scipy.stats", "decoupler")
ROW_GENES = 20  # overlapping genes an EnrichmentRow lists


def de_genes(context: pd.DataFrame, direction: Direction, top_n: int, q_threshold: float = DE_Q_THRESHOLD) -> list[str]:
    """One context's DE genes in ``direction``: q below the threshold, most significant first, at most ``top_n``."""
    sign = 1.0 if direction == "up" else -1.0
    hits = context[(context["q_value"] < q_threshold) & (sign * context["log_fold_change"] > 0)]
    hits = hits.assign(_effect=-hits["log_fold_change"].abs()).sort_values(["q_value", "p_value", "_effect", "gene"])
    return hits["gene"].head(top_n).tolist()


def enrichment(
    de: pd.DataFrame,
    pack: KnowledgePack,
    settings: GroundingSettings,
    *,
    expected: Mapping[str, Direction] | None = None,
    always_test: Iterable[str] = (),
) -> list[EnrichmentRow]:
    """Every tested (context, direction, set), most significant first within each context and direction.

    ``expected`` (set id -> direction) marks the expectations' sets on their rows; ``always_test`` are set
    ids tested whatever their size (at least ``min_set_size`` genes in the background).
    """
    expected = dict(expected or {})
    forced = set(always_test) | set(expected)
    rows: list[EnrichmentRow] = []
    prepared: dict[tuple[str, ...], _Sets | None] = {}  # contexts of one job share their background
    for split_value, context in de.groupby("split_value", sort=False):
        background = tuple(context["gene"].astype(str))
        if background not in prepared:
            prepared[background] = _Sets.of(background, background_sets(background, pack, settings, forced))
        sets = prepared[background]
        if sets is None:
            continue
        for direction in DIRECTIONS:
            hits = de_genes(context, direction, settings.top_de_genes)
            if hits:
                rows.extend(_ora_rows(str(split_value), direction, hits, sets, pack, expected))
    return rows


def background_sets(
    background: Sequence[str], pack: KnowledgePack, settings: GroundingSettings, forced: Iterable[str] = ()
) -> dict[str, list[str]]:
    """set id -> the set's genes in the background (as the DE table spells them), for the sets to test."""
    by_symbol = {gene.upper(): gene for gene in background}
    symbols = frozenset(by_symbol)  # a set's genes are upper-case: a C-level intersection per set
    forced = set(forced)
    sets: dict[str, list[str]] = {}
    for set_id, gene_set in pack.gene_sets.items():
        common = gene_set.genes & symbols
        size_ok = settings.min_set_size <= len(common) <= settings.max_set_size
        if size_ok or (set_id in forced and len(common) >= settings.min_set_size):
            sets[set_id] = sorted(by_symbol[g] for g in common)
    return sets


def is_enriched(row: EnrichmentRow, q_threshold: float = DE_Q_THRESHOLD) -> bool:
    """Significant and over-represented: decoupler's Fisher test is two-sided, so a depleted set is not enriched."""
    return row.q_value < q_threshold and row.overlap > row.de_genes * row.set_size / row.background


def start_importing_decoupler(
    after: threading.Event | None = None, pack: Callable[[], KnowledgePack] | None = None
) -> threading.Thread:
    """Ready the grounding on a background thread while the round's GPU job runs, so the round's
    grounding does not wait for it: import the parquet reader (pyarrow's extension: ~0.5 s), scipy.stats
    and decoupler (numba, seaborn: 2-3 s), and run one tiny ORA, which makes numba load decoupler's
    compiled ORA (another ~0.6 s on its first call). ``after``: begin once it is set (the round sets it
    when its GPU job is submitted: importing beside the submission slowed it by up to 2.8 s through the
    GIL). ``pack``: the knowledge pack the scoring will use, whose gene sets are then made (the ORA
    reads them all; a loaded pack keeps them as text until used). The round joins the thread before
    scoring (one importer at a time). A failure is left to the scoring, which meets it again and
    reports it there.

    Last, what the process holds by then (modules, Prefect's state, the knowledge pack) lives as long
    as the process: after one full collection it is frozen out of the collector's sight (``gc.freeze``).
    A full collection walks every object the collector tracks, 0.2-0.3 s in a flow process with pandas,
    anndata and decoupler loaded, and one used to fall inside the round's scoring."""

    def run() -> None:
        if after is not None:
            after.wait()
        with contextlib.suppress(Exception):  # the scoring imports and runs it again and raises there
            for module in _GROUNDING_IMPORTS:
                importlib.import_module(module)
            _warm_ora()
            if pack is not None:
                for _ in pack().gene_sets.values():
                    pass
            gc.collect()
            gc.freeze()

    thread = threading.Thread(target=run, name="import-decoupler", daemon=True)
    thread.start()
    return thread


def _warm_ora() -> None:
    """The enrichment's own ORA path, on a made-up background of six genes and one set of three."""
    background = tuple(f"G{i}" for i in range(6))
    members = list(background[:3])
    pack = KnowledgePack(version="warm-up", sources=[], gene_sets={"warm": GeneSet("warm", "warm", frozenset(members), "")})
    sets = _Sets.of(background, {"warm": members})
    if sets is not None:
        _ora_rows("warm", "up", list(background[:2]), sets, pack, {})


@dataclass(frozen=True)
class _Sets:
    """The sets to test, indexed over the background as decoupler's ORA reads them."""

    features: np.ndarray
    members: dict[str, list[str]]
    sources: np.ndarray
    cnct: np.ndarray
    starts: np.ndarray
    offsets: np.ndarray

    @classmethod
    def of(cls, background: Sequence[str], members: dict[str, list[str]]) -> _Sets | None:
        """The arrays ``dc.pp.idxmat`` makes of ``dc.pp.prune(features, net, tmin=1)``'s net (sets with
        a gene in the background, sorted by id; each set's genes as background indices, in its order),
        built from the sets directly: idxmat groups a DataFrame with a Python function per set (0.27 s
        for 3000 sets, 0.03 s here; every round's grounding). Equal arrays: tests/grounding."""
        index = {gene: i for i, gene in enumerate(background)}  # a repeated name: its last place, as idxmat
        targets = {set_id: [index[g] for g in genes if g in index] for set_id, genes in members.items()}
        kept = sorted(set_id for set_id, found in targets.items() if found)
        if not kept:
            return None
        offsets = np.fromiter((len(targets[set_id]) for set_id in kept), dtype=int, count=len(kept))
        cnct = np.fromiter((i for set_id in kept for i in targets[set_id]), dtype=int, count=int(offsets.sum()))
        starts = np.zeros_like(offsets)
        starts[1:] = np.cumsum(offsets)[:-1]
        features = np.asarray(background, dtype="U")
        return cls(features, members, np.asarray(kept, dtype="U"), cnct, starts, offsets)


def _ora_rows(
    split_value: str,
    direction: Direction,
    hits: list[str],
    sets: _Sets,
    pack: KnowledgePack,
    expected: Mapping[str, Direction],
) -> list[EnrichmentRow]:
    # Here, not at import: scipy.stats costs a flow ~0.7 s to import, and the round preloads both.
    import decoupler as dc
    from scipy.stats import false_discovery_control

    features = sets.features
    selected = np.isin(features, hits).astype(float)[None, :]
    # dc.mt.ora takes one n_up for all rows and returns only BH-adjusted p-values, so its method
    # function runs per row. In decoupler 2.2 it observes the features ranked above n_up: with a
    # 0/1 row, n_up = background - DE genes observes exactly the DE genes. n_bg=None: the universe
    # is the matrix's features, the background.
    log_odds, p_values = dc.mt.ora.func(
        selected, sets.cnct, sets.starts, sets.offsets, n_up=len(features) - len(hits), n_bm=0, n_bg=None
    )
    log_odds, p_values = log_odds[0], np.clip(p_values[0], 0.0, 1.0)
    q_values = false_discovery_control(p_values, method="bh")
    rank = {gene: i for i, gene in enumerate(hits)}
    rows = []
    for j, set_id in enumerate(sets.sources):
        members = sets.members[str(set_id)]
        overlap = sorted((g for g in members if g in rank), key=rank.__getitem__)
        _check_table(log_odds[j], len(overlap), len(members), len(hits), len(features), str(set_id))
        rows.append(
            EnrichmentRow(
                split_value=split_value,
                direction=direction,
                set_id=str(set_id),
                name=pack.gene_sets[str(set_id)].name,
                set_size=len(members),
                overlap=len(overlap),
                de_genes=len(hits),
                background=len(features),
                odds_ratio=float(math.exp(log_odds[j])),
                p_value=float(p_values[j]),
                q_value=float(q_values[j]),
                expected=expected.get(str(set_id)),
                genes=overlap[:ROW_GENES],
            )
        )
    rows.sort(key=lambda row: (row.p_value, -row.overlap, row.set_id))
    return rows


def _check_table(log_odds: float, a: int, set_size: int, n_hits: int, n_background: int, set_id: str) -> None:
    """decoupler's odds ratio must be the one of our own 2x2 table, or it observed other genes than the DE ones."""
    b, c = n_hits - a, set_size - a
    d = n_background - a - b - c
    ours = math.log(((a + 0.5) * (d + 0.5)) / ((b + 0.5) * (c + 0.5)))  # Haldane-Anscombe, as decoupler
    if not math.isclose(ours, float(log_odds), rel_tol=1e-6, abs_tol=1e-9):
        import decoupler as dc

        raise RuntimeError(
            f"decoupler's ORA for {set_id} tested another table than the DE genes' (log odds {log_odds} vs {ours}): "
            f"its n_up meaning changed in decoupler {dc.__version__}; pin decoupler 2.2 or update enrichment.py"
        )
