"""Enrichment against the right universe: the genes the model and input have (the DE background),
never the genome; and the DE table it reads, checked on the way in."""

from __future__ import annotations

import pandas as pd
import pytest
from scipy.stats import false_discovery_control, fisher_exact

from clients.grounding_settings import GroundingSettings
from inference.contract import DE_COLUMNS
from tasks.grounding.de_table import DeTableError, read_de_table
from tasks.grounding.enrichment import de_genes, enrichment, is_enriched, start_importing_decoupler
from tasks.grounding.pack import GeneSet, KnowledgePack

BACKGROUND = [f"G{i:03d}" for i in range(200)]
UP = BACKGROUND[:10]  # the DE genes, up


def de_table(up: list[str], *, q: float = 1e-4) -> pd.DataFrame:
    rows = [
        {
            "split_value": "IFNB", "gene": gene, "mean_treated": 1.0, "mean_reference": 1.0,
            "log_fold_change": 1.0 + i / 100 if gene in up else 0.0, "statistic": 0.0,
            "p_value": q / 10 if gene in up else 0.5, "q_value": q * (1 + i / 1000) if gene in up else 0.9,
            "fraction_same_direction": 0.5, "reference": "synthetic_control", "test": "test",
        }
        for i, gene in enumerate(BACKGROUND)
    ]
    return pd.DataFrame(rows)[DE_COLUMNS]


def pack_of(*sets: GeneSet) -> KnowledgePack:
    return KnowledgePack(version="p", sources=[], gene_sets={s.set_id: s for s in sets})


def test_the_universe_is_the_background_not_the_sets_own_genes() -> None:
    outside = [f"NOTMEASURED{i}" for i in range(100)]
    members = [*UP[:5], *BACKGROUND[50:60]]  # 5 DE genes + 10 others in the background
    pack = pack_of(GeneSet("S:1", "one", frozenset([*members, *outside]), "t"))
    (row,) = [r for r in enrichment(de_table(UP), pack, GroundingSettings()) if r.direction == "up"]
    assert (row.set_size, row.overlap, row.de_genes, row.background) == (15, 5, 10, 200)
    # The 2x2 table of the background: DE x in-set; the 100 genes the model never saw are nowhere in it.
    table = [[5, 10 - 5], [15 - 5, 200 - 10 - 15 + 5]]
    assert row.p_value == pytest.approx(fisher_exact(table).pvalue, rel=1e-6)
    genome_table = [[5, 5], [110, 1000]]
    assert row.p_value != pytest.approx(fisher_exact(genome_table).pvalue, rel=1e-2)
    assert sorted(row.genes) == sorted(UP[:5])


def test_sets_are_cut_to_the_background_before_the_size_limits() -> None:
    big_outside = GeneSet("S:mostly-unmeasured", "mostly unmeasured", frozenset([*UP[:3], *[f"X{i}" for i in range(50)]]), "t")
    too_big = GeneSet("S:huge", "huge", frozenset(BACKGROUND[:150]), "t")
    fine = GeneSet("S:fine", "fine", frozenset([*UP[:6], *BACKGROUND[100:110]]), "t")
    settings = GroundingSettings(min_set_size=5, max_set_size=100)
    tested = {r.set_id for r in enrichment(de_table(UP), pack_of(big_outside, too_big, fine), settings)}
    assert tested == {"S:fine"}  # 3 genes in the background are too few; 150 too many
    # a set the expectations name is tested at any size above the minimum
    forced = enrichment(de_table(UP), pack_of(big_outside, too_big, fine), settings, expected={"S:huge": "up"})
    assert {r.set_id for r in forced} == {"S:fine", "S:huge"}
    assert next(r for r in forced if r.set_id == "S:huge").expected == "up"


def test_bh_runs_across_the_sets_of_one_context_and_direction() -> None:
    sets = [GeneSet(f"S:{i}", f"set {i}", frozenset([*UP[: i + 1], *BACKGROUND[20 + 10 * i : 30 + 10 * i]]), "t")
            for i in range(6)]
    rows = [r for r in enrichment(de_table(UP), pack_of(*sets), GroundingSettings()) if r.direction == "up"]
    assert [r.p_value for r in rows] == sorted(r.p_value for r in rows)  # most significant first
    expected_q = false_discovery_control([r.p_value for r in rows], method="bh")
    assert [r.q_value for r in rows] == pytest.approx(list(expected_q))


def test_a_depleted_set_is_not_enriched_even_when_significant() -> None:
    up = BACKGROUND[:100]  # half the background is up; the set holds none of them
    depleted = GeneSet("S:none", "none of them", frozenset(BACKGROUND[100:140]), "t")
    settings = GroundingSettings(top_de_genes=100)
    (row,) = [r for r in enrichment(de_table(up), pack_of(depleted), settings) if r.direction == "up"]
    assert row.q_value < 0.05 and row.overlap == 0
    assert not is_enriched(row)


def test_only_significant_de_genes_in_the_direction_count_at_most_top_n() -> None:
    de = de_table(UP)
    assert de_genes(de, "up", top_n=4) == UP[:4]  # by q
    assert de_genes(de, "down", top_n=4) == []
    assert de_genes(de_table(UP, q=0.2), "up", top_n=50) == []


def test_no_de_genes_means_no_rows() -> None:
    pack = pack_of(GeneSet("S:1", "one", frozenset(BACKGROUND[:20]), "t"))
    assert enrichment(de_table([]), pack, GroundingSettings()) == []


# --- reading the DE table ------------------------------------------------------------------------


def test_read_de_table_through_storage(tmp_path) -> None:
    path = tmp_path / "de.parquet"
    de_table(UP).to_parquet(path)
    table = read_de_table(path.as_uri())
    assert list(table.columns) == DE_COLUMNS and len(table) == len(BACKGROUND)


def test_read_de_table_names_the_missing_columns(tmp_path) -> None:
    path = tmp_path / "de.parquet"
    de_table(UP).drop(columns=["q_value", "fraction_same_direction"]).to_parquet(path)
    with pytest.raises(DeTableError, match="missing column\\(s\\) q_value, fraction_same_direction"):
        read_de_table(path.as_uri())


def test_read_de_table_that_is_not_there(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="de.parquet"):
        read_de_table((tmp_path / "de.parquet").as_uri())


def test_decoupler_is_imported_on_a_thread_so_the_rounds_grounding_need_not_wait() -> None:
    """The round starts this before its GPU job; joined, the parquet reader, scipy.stats and decoupler
    are loaded and numba has decoupler's compiled ORA ready (in a fresh interpreter, which had none)."""
    import subprocess
    import sys

    code = (
        "import sys; from tasks.grounding.enrichment import start_importing_decoupler; "
        "wanted = ('decoupler', 'scipy.stats', 'pyarrow.parquet'); "
        "assert not [m for m in wanted if m in sys.modules]; "
        "start_importing_decoupler().join(); "
        "assert all(m in sys.modules for m in wanted), [m for m in wanted if m not in sys.modules]; "
        "from decoupler.mt import _ora; assert _ora._runora.signatures, 'ORA not compiled'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr


def test_the_preload_makes_the_packs_gene_sets_while_the_job_runs(tmp_path) -> None:
    """The ORA reads every set's genes; the round's preload thread makes them before the scoring."""
    import shutil

    from clients.grounding_settings import DEFAULT_PACK_DIR
    from tasks.grounding.pack import load_pack

    shutil.copytree(DEFAULT_PACK_DIR, tmp_path / "pack")
    pack = load_pack((tmp_path / "pack").as_uri())
    assert not any(isinstance(entry, GeneSet) for entry in pack.gene_sets._entries.values())
    start_importing_decoupler(pack=lambda: pack).join()
    assert all(isinstance(entry, GeneSet) for entry in pack.gene_sets._entries.values())


def test_the_sets_index_is_decouplers_own() -> None:
    """``_Sets.of`` builds the arrays decoupler's ``pp.prune`` + ``pp.idxmat`` make, which ``mt.ora``
    reads: ids sorted, each set's genes as background indices in its order, empty sets and genes
    outside the background dropped, a repeated background name at its last place."""
    import decoupler as dc
    import numpy as np

    from tasks.grounding.enrichment import _Sets

    rng = np.random.default_rng(7)
    background = [*BACKGROUND, "G005"]  # a repeated name
    members = {
        f"S:{rng.integers(10**6):06d}": list(rng.choice(BACKGROUND, size=int(rng.integers(1, 40)), replace=False))
        for _ in range(300)
    }
    members["A:empty"] = []
    members["B:outside"] = ["NOTMEASURED", "G001"]
    ours = _Sets.of(background, members)

    features = np.asarray(background, dtype="U")
    net = pd.DataFrame([(s, g) for s, genes in members.items() for g in genes], columns=["source", "target"])
    theirs = dc.pp.idxmat(features=features, net=dc.pp.prune(features=features, net=net, tmin=1))
    for mine, reference in zip((ours.sources, ours.cnct, ours.starts, ours.offsets), theirs, strict=True):
        np.testing.assert_array_equal(mine, reference)
    assert "A:empty" not in ours.sources and _Sets.of(BACKGROUND, {"A:empty": []}) is None
