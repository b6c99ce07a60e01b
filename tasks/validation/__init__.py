"""Validation of an h5ad file before anything is uploaded or any GPU is paid for (no Prefect).

``validate_h5ad(path, ...)`` returns a :class:`DatasetFacts` or raises :class:`InputValidationError`;
the order of the checks is in :mod:`tasks.validation.validate`.
"""

from tasks.validation.errors import InputValidationError
from tasks.validation.facts import LOW_CARDINALITY, CountsLocation, DatasetFacts, MatrixStats, ObsColumnFacts
from tasks.validation.genes import read_gene_list
from tasks.validation.hdf5_file import GZIP_MAGIC, METADATA_TIMEOUT_S
from tasks.validation.matrices import BLOCK_VALUES, COUNTS_LAYER
from tasks.validation.validate import validate_h5ad

__all__ = [
    "BLOCK_VALUES",
    "COUNTS_LAYER",
    "GZIP_MAGIC",
    "LOW_CARDINALITY",
    "METADATA_TIMEOUT_S",
    "CountsLocation",
    "DatasetFacts",
    "InputValidationError",
    "MatrixStats",
    "ObsColumnFacts",
    "read_gene_list",
    "validate_h5ad",
]
