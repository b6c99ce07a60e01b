"""The knowledge pack: gene sets and the Cell Ontology, offline and versioned, read from storage.

(Interface fixed first; the loading, GMT parsing and search are filled in beside it.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tasks.grounding.models import CellTypeTerm


class GmtError(ValueError):
    """A GMT file that cannot be read; the message names the file, the line and the fix."""


class UnknownGeneSet(KeyError):
    """A gene set the pack does not have; the message lists the closest names."""

    def __str__(self) -> str:  # KeyError quotes its message; this one is meant to be read
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class PackSource:
    """Where one part of the pack came from."""

    name: str  # "GO.db", "org.Hs.eg.db", "Cell Ontology (cellxgene-ontology-guide)", or a GMT's file name
    version: str
    sha256: str  # of the source file as obtained (the .deb, the ontology JSON, the GMT)
    licence: str
    url: str = ""


@dataclass(frozen=True)
class GeneSet:
    set_id: str  # GO:0006954, or "<gmt name>:<set name>"
    name: str  # "inflammatory response"
    genes: frozenset[str]  # upper-case symbols
    collection: str  # "GO BP", or the GMT's name


@dataclass(frozen=True)
class OntologyTerm:
    term_id: str  # CL:0000236
    label: str
    synonyms: tuple[str, ...] = ()
    ancestors: tuple[str, ...] = ()  # nearest first


@dataclass
class KnowledgePack:
    version: str  # e.g. "pack-1 (GO.db 3.16.0, org.Hs.eg.db 3.16.0, CL v2026-03-26)" plus user GMT digests
    sources: list[PackSource]
    gene_sets: dict[str, GeneSet]  # by set_id
    cell_types: dict[str, OntologyTerm] = field(default_factory=dict)  # by term_id

    def gene_set(self, key: str) -> GeneSet:
        raise NotImplementedError

    def search_gene_sets(self, text: str, limit: int = 10) -> list[GeneSet]:
        raise NotImplementedError

    def resolve_cell_type(self, text: str) -> CellTypeTerm | None:
        raise NotImplementedError

    def search_cell_types(self, text: str, limit: int = 10) -> list[OntologyTerm]:
        raise NotImplementedError
