"""Read the job's DE table (``de.parquet``: treated contexts x genes tested) through the storage client.

It is small (genes x contexts, a few MB), so the flow reads it whole; the predictions themselves never
travel to the flow's container.
"""

from __future__ import annotations

import io

import pandas as pd

from clients.storage import ObjectNotFoundError, store_for
from inference.contract import DE_COLUMNS

_NUMERIC = ("mean_treated", "mean_reference", "log_fold_change", "statistic", "p_value", "q_value", "fraction_same_direction")


class DeTableError(ValueError):
    """A DE table that cannot be scored; the message names the file, the problem and the fix."""


def read_de_table(uri: str) -> pd.DataFrame:
    """The DE table at ``uri`` (.parquet, or .csv / .csv.gz), its columns checked."""
    store = store_for(uri)
    local = store.local_path(uri)
    if local is not None and not local.is_file():
        raise _not_found(uri)
    try:
        source = local if local is not None else io.BytesIO(store.get_bytes(uri))
    except ObjectNotFoundError as exc:
        raise _not_found(uri) from exc
    table = pd.read_csv(source) if uri.endswith((".csv", ".csv.gz")) else pd.read_parquet(source)
    return check_de_table(table, uri)


def _not_found(uri: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{uri}: no DE table there; the GPU job writes de.parquet beside its predictions: check the job's outputs"
    )


def check_de_table(table: pd.DataFrame, uri: str = "DE table") -> pd.DataFrame:
    """``table`` with its names as strings and figures as floats, or DeTableError naming what is missing."""
    missing = [column for column in DE_COLUMNS if column not in table.columns]
    if missing:
        raise DeTableError(
            f"{uri}: missing column(s) {', '.join(missing)} (has {', '.join(map(str, table.columns))}); "
            "it must be written by inference.de with the columns of DE_COLUMNS: rerun the job with this version"
        )
    table = table.copy()
    for column in ("split_value", "gene", "reference", "test"):
        table[column] = table[column].astype(str)
    for column in _NUMERIC:
        try:
            table[column] = pd.to_numeric(table[column]).astype(float)
        except (TypeError, ValueError) as exc:
            raise DeTableError(f"{uri}: column {column} is not numeric ({exc}); rerun the job with this version") from exc
    duplicated = table.duplicated(["split_value", "gene"])
    if duplicated.any():
        first = table.loc[duplicated, ["split_value", "gene"]].iloc[0].tolist()
        raise DeTableError(
            f"{uri}: {int(duplicated.sum())} duplicate (split_value, gene) row(s), e.g. {first}; each context tests a "
            "gene once: the table is damaged, rerun the job"
        )
    return table
