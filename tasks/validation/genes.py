"""The genes: the model's gene list, duplicate gene names, and the overlap with the model's genes
(with the gene names that would match better)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from inference import gene_list
from inference.data import suggest_gene_column
from tasks.validation.errors import InputValidationError, plural
from tasks.validation.facts import CountsLocation
from tasks.validation.matrices import where_written


def read_gene_list(path: str | Path) -> list[str]:
    """The model's gene list (a pickled list of symbols, .json or .txt), returned upper-cased.

    Read with :mod:`inference.gene_list`, whose unpickler builds only strings and lists: a request
    may name its own gene list, and nothing it names may run code.
    """
    try:
        genes = gene_list.read_gene_list(path)
    except gene_list.GeneListError as exc:
        raise InputValidationError(exc.path, exc.problem, exc.fix) from None
    return [g.upper() for g in genes]


def reject_duplicate_genes(
    path: Path, var_names: pd.Index, location: CountsLocation, gene_name_column: str | None = None
) -> None:
    upper = var_names.str.upper()
    dupes = upper[upper.duplicated()].unique()
    if len(dupes):
        examples = ", ".join(dupes[:5])
        names = f"var[{gene_name_column!r}]" if gene_name_column else "the genes"
        fix = "make them unique (adata.var_names_make_unique()) or sum the duplicated genes"
        if gene_name_column:
            fix = f"make the values of var[{gene_name_column!r}] unique or sum the duplicated genes"
        raise InputValidationError(
            path,
            f"duplicate gene names in {names} of {where_written(location)} "
            f"({plural(len(dupes), 'name')}, compared upper-cased: {examples})",
            fix,
        )


def gene_overlap(
    path: Path,
    var_names: pd.Index,
    model_genes: Sequence[str] | None,
    threshold: float,
    var: pd.DataFrame | None = None,
    gene_name_column: str | None = None,
) -> tuple[float, int] | None:
    if not model_genes:
        return None
    model = {g.upper() for g in model_genes}
    matched = len(model & set(var_names.str.upper()))
    fraction = matched / len(model)
    if fraction < threshold:
        named = f"var[{gene_name_column!r}]" if gene_name_column else "var_names"
        raise InputValidationError(
            path,
            f"gene overlap with the model is {fraction:.1%} ({matched} of {len(model)} model genes), "
            f"below the required {threshold:.0%}; genes ({named}) look like {', '.join(var_names[:3])}",
            _overlap_fix(var, model, matched, gene_name_column),
        )
    return fraction, matched


def _overlap_fix(var: pd.DataFrame | None, model: set[str], matched: int, gene_name_column: str | None) -> str:
    """Name the gene names that would match better: a var column (CELLxGENE's feature_name), or var_names."""
    if var is not None:
        better = suggest_gene_column(var, sorted(model), current=gene_name_column)
        if better and better[1] > matched:
            column, hits = better
            return (
                f"set gene_name_column={column!r}: var[{column!r}] holds {hits} of the {len(model)} model genes "
                "(symbols there, other ids in var_names, as CELLxGENE files have them)"
            )
        if gene_name_column is not None:
            hits = len(model & set(var.index.astype(str).str.upper()))
            if hits > matched:
                return f"leave gene_name_column unset: var_names hold {hits} of the {len(model)} model genes"
    return (
        "use gene symbols (not Ensembl ids) for var_names or name the var column that holds them "
        "(gene_name_column), include all measured genes (not only highly variable ones), or lower "
        "model.min_gene_overlap"
    )
