"""DE of predictions against their reference (inference.de), on planted effects and on nulls."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from inference.contract import DE_COLUMNS, DE_Q_THRESHOLD
from inference.de import PAIRED_TEST, UNPAIRED_TEST, paired_de, unpaired_de
from inference.summary import split_summary

N_CELLS, N_GENES = 60, 200
GENES = [f"GENE{i}" for i in range(N_GENES)]
UP, DOWN = list(range(0, 10)), list(range(10, 20))
IDS = [f"cell{i}" for i in range(N_CELLS)]


def _arms(seed: int, effect: float) -> tuple[np.ndarray, np.ndarray]:
    """Control and treated counts of the same query cells: each cell has its own expression profile
    (so pairing matters), the treated arm scales UP by ``effect`` and DOWN by 1/``effect``."""
    rng = np.random.default_rng(seed)
    cell_mean = rng.lognormal(2.0, 0.8, size=(N_CELLS, N_GENES))
    control = rng.poisson(cell_mean)
    treated_mean = cell_mean.copy()
    treated_mean[:, UP] *= effect
    treated_mean[:, DOWN] /= effect
    return rng.poisson(treated_mean).astype(np.float32), control.astype(np.float32)


def _paired(treated, control, **kw) -> pd.DataFrame:
    return paired_de(treated, control, GENES, split_value="drug", reference_value="vehicle",
                     query_cells_treated=kw.pop("ids_t", IDS), query_cells_control=kw.pop("ids_c", IDS), **kw)


@pytest.mark.parametrize("sparse", [False, True])
def test_paired_de_finds_raised_and_lowered_sets(sparse: bool) -> None:
    treated, control = _arms(0, effect=3.0)
    if sparse:
        treated, control = sp.csr_matrix(treated), sp.csr_matrix(control)
    de = _paired(treated, control, chunk_genes=64)  # several chunks: q must still be over every gene
    assert list(de.columns) == DE_COLUMNS and len(de) == N_GENES
    assert set(de["test"]) == {PAIRED_TEST} and set(de["reference"]) == {"synthetic_control"}
    up, down = de.iloc[UP], de.iloc[DOWN]
    assert (up["q_value"] < 0.05).all() and (up["log_fold_change"] > 0).all()
    assert (down["q_value"] < 0.05).all() and (down["log_fold_change"] < 0).all()
    assert (up["fraction_same_direction"] > 0.9).all() and (down["fraction_same_direction"] > 0.9).all()
    assert np.allclose(de["log_fold_change"], de["mean_treated"] - de["mean_reference"])
    summary = split_summary(de, cells=N_CELLS, reference_value="vehicle")
    assert {g.gene for g in summary.top_up} == {GENES[i] for i in UP}
    assert {g.gene for g in summary.top_down} == {GENES[i] for i in DOWN}
    assert summary.significant_up >= len(UP) and summary.significant_down >= len(DOWN)


def test_paired_de_null_finds_nothing() -> None:
    treated, control = _arms(1, effect=1.0)
    de = _paired(treated, control)
    assert (de["q_value"] >= 0.05).all()
    summary = split_summary(de, cells=N_CELLS)
    assert summary.significant_up == summary.significant_down == 0
    # nothing significant: the top genes are the largest effects, and their q says so
    assert summary.top_up and all(g.q_value >= DE_Q_THRESHOLD for g in summary.top_up)


def test_paired_de_pairs_by_query_cell_not_by_position() -> None:
    treated, control = _arms(2, effect=1.5)
    de = _paired(treated, control)
    rng = np.random.default_rng(0)
    perm = rng.permutation(N_CELLS)
    # the same pairs in another row order: ids carry the pairing, so nothing changes
    reordered = _paired(treated, control[perm], ids_c=[IDS[i] for i in perm])
    pd.testing.assert_frame_equal(de, reordered)
    # a shuffled pairing (ids no longer match the rows): the paired statistic changes
    shuffled = _paired(treated, control[perm])
    assert not np.allclose(de["statistic"], shuffled["statistic"])
    assert np.allclose(de["log_fold_change"], shuffled["log_fold_change"])  # means alone ignore the pairing
    # and it loses the power pairing gave: each cell's own profile no longer cancels
    assert (shuffled.iloc[UP]["p_value"] > de.iloc[UP]["p_value"]).mean() > 0.8


def test_paired_de_refuses_arms_of_different_cells() -> None:
    treated, control = _arms(3, effect=1.0)
    with pytest.raises(ValueError, match="different query cells"):
        _paired(treated, control, ids_c=[f"other{i}" for i in range(N_CELLS)])


def test_paired_de_gene_without_any_change_has_p_one() -> None:
    treated, control = _arms(4, effect=2.0)
    treated[:, 50] = control[:, 50] = 0
    de = _paired(treated, control)
    assert de.iloc[50]["p_value"] == 1.0 and de.iloc[50]["log_fold_change"] == 0.0


def test_unpaired_de_uses_pdex_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    import pdex

    calls = []
    real = pdex.pdex
    monkeypatch.setattr(pdex, "pdex", lambda *a, **k: calls.append(k) or real(*a, **k))
    rng = np.random.default_rng(5)
    genes = [f"GENE{i}" for i in range(1000)]  # enough genes that the planted sets barely move the library
    reference = rng.poisson(5.0, size=(50, len(genes))).astype(np.float32)
    mean = np.full((70, len(genes)), 5.0)
    mean[:, UP] *= 3
    mean[:, DOWN] /= 3
    treated = rng.poisson(mean).astype(np.float32)
    de = unpaired_de(sp.csr_matrix(treated), reference, genes, split_value="drug", chunk_genes=256, threads=1)
    assert calls and all(k["is_log1p"] for k in calls)
    assert de["test"].iloc[0].startswith(UNPAIRED_TEST) and "pdex" in de["test"].iloc[0]
    assert set(de["reference"]) == {"query_input"}
    assert (de.iloc[UP]["q_value"] < 0.05).all() and (de.iloc[UP]["log_fold_change"] > 0).all()
    assert (de.iloc[DOWN]["q_value"] < 0.05).all() and (de.iloc[DOWN]["log_fold_change"] < 0).all()
    others = de.drop(index=UP + DOWN)
    # the rest is null: at most the false positives an FDR of 5% allows
    assert (others["q_value"] < 0.05).mean() <= 0.05


def test_unpaired_de_null_finds_nothing() -> None:
    rng = np.random.default_rng(6)
    a = rng.poisson(5.0, size=(50, N_GENES)).astype(np.float32)
    b = rng.poisson(5.0, size=(60, N_GENES)).astype(np.float32)
    de = unpaired_de(a, b, GENES, split_value="drug", threads=1)
    assert (de["q_value"] < 0.05).sum() == 0


def test_de_chunk_size_follows_the_cells_and_never_changes_a_result(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many cells: fewer genes per dense chunk (bounded memory), the same table to the bit."""
    import inference.de as de_mod

    treated, control = _arms(2, effect=2.0)
    reference = np.random.default_rng(7).poisson(5.0, size=(40, N_GENES)).astype(np.float32)
    paired, unpaired = _paired(treated, control), unpaired_de(treated, reference, GENES, split_value="drug", threads=1)
    monkeypatch.setattr(de_mod, "CHUNK_ELEMENTS", 2 * N_CELLS * 7)  # 7 genes per chunk for the paired arms
    assert de_mod.genes_per_chunk(2 * N_CELLS) == 7
    pd.testing.assert_frame_equal(_paired(treated, control), paired)
    pd.testing.assert_frame_equal(unpaired_de(treated, reference, GENES, split_value="drug", threads=1), unpaired)
