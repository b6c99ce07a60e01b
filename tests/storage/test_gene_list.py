"""The gene list a request names is read as data: a pickle that asks for code is refused, unrun."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from inference.gene_list import GeneListError, read_gene_list
from tasks.validation import InputValidationError
from tasks.validation import read_gene_list as read_model_genes


class _RunsCode:
    """Unpickling this calls os.system, as a hostile gene list would."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_gene_list_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    hostile = tmp_path / "genes.pkl"
    hostile.write_bytes(pickle.dumps(["CD3E", _RunsCode(marker)]))
    # The same bytes do run code under plain pickle: the test would notice a loader that used it.
    assert not marker.exists()

    with pytest.raises(GeneListError, match=r"refused to unpickle: it asks for (posix|os)\.system"):
        read_gene_list(hostile)
    with pytest.raises(InputValidationError, match="a gene list may hold only strings"):
        read_model_genes(hostile)

    assert not marker.exists()
    pickle.loads(hostile.read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("payload", [{"CD3E": 1}, ["CD3E", 7], "CD3E"])
def test_gene_list_pickle_of_anything_but_strings_is_refused(tmp_path: Path, payload) -> None:
    path = tmp_path / "genes.pkl"
    path.write_bytes(pickle.dumps(payload))
    with pytest.raises(GeneListError, match="non-empty list of gene symbol strings"):
        read_gene_list(path)


def test_gene_list_formats_users_have(tmp_path: Path) -> None:
    genes = ["CD3E", "ms4a1", "LYZ"]
    (tmp_path / "list.pkl").write_bytes(pickle.dumps(genes))
    (tmp_path / "tuple.pkl").write_bytes(pickle.dumps(tuple(genes)))
    (tmp_path / "array.pkl").write_bytes(pickle.dumps(np.array(genes)))
    (tmp_path / "genes.json").write_text(json.dumps(genes))
    (tmp_path / "genes.txt").write_text("CD3E\nms4a1\n\nLYZ\n")

    for name in ("list.pkl", "tuple.pkl", "array.pkl", "genes.json", "genes.txt"):
        assert read_gene_list(tmp_path / name) == genes, name
    assert read_model_genes(tmp_path / "genes.json") == ["CD3E", "MS4A1", "LYZ"]


def test_gene_list_object_array_items_are_unpickled_under_the_same_rules(tmp_path: Path) -> None:
    path = tmp_path / "genes.pkl"
    path.write_bytes(pickle.dumps(np.array(["CD3E", _RunsCode(tmp_path / "ran")], dtype=object)))
    with pytest.raises(GeneListError, match="a gene list may hold only strings"):
        read_gene_list(path)
    assert not (tmp_path / "ran").exists()
