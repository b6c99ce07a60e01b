"""What code checks in the model's expectations before they become the run's yardstick.

The model proposes; the pack and the documents decide. A gene set or cell type id the pack does not
have is dropped, a claim whose quote is not on the page it cites is dropped, each with a note the
report shows. The request's own expectations always stay: where the model disagrees, the request wins.
"""

from __future__ import annotations

import re
import unicodedata

from tasks.agent.expectation_tools import ExpectationsProposal, Page, find_page
from tasks.grounding.models import CellTypeTerm, DocumentClaim, ExpectedGene, ExpectedGeneSet, Expectations
from tasks.grounding.pack import KnowledgePack, UnknownGeneSet

_GENE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.\-_/]{0,63}$")


def merge_model_expectations(
    base: Expectations, proposal: ExpectationsProposal, pack: KnowledgePack, pages: list[Page], model: str
) -> Expectations:
    """``base`` (the request's expectations) plus what survives of the model's proposal."""
    notes = list(base.notes)
    why = f"model {model}" + (f": {proposal.rationale.strip()}" if proposal.rationale.strip() else "")
    genes = _genes(base.genes, proposal, why[:500], notes)
    gene_sets = _gene_sets(base.gene_sets, proposal, pack, why[:500], notes)
    cell_type = _cell_type(base.cell_type, proposal.cell_type_id, pack, notes)
    claims = _claims(proposal, pack, pages, notes)
    return base.model_copy(
        update={
            "genes": genes,
            "gene_sets": gene_sets,
            "cell_type": cell_type,
            "claims": [*base.claims, *claims],
            "notes": notes,
            "set_by": f"{base.set_by} + model {model}",
        }
    )


def quote_on_page(quote: str, page_text: str) -> bool:
    """Whether ``quote`` is on the page, ignoring case, spacing, markdown emphasis and quote styles."""
    needle = normalise_text(quote)
    return bool(needle) and needle in normalise_text(page_text)


def normalise_text(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    text = text.translate(_PUNCTUATION)
    text = re.sub(r"[*_`#]+", "", text)  # markdown emphasis and headings (LightOnOCR writes markdown)
    return " ".join(text.split())


_PUNCTUATION = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-"})


def _genes(
    kept: list[ExpectedGene], proposal: ExpectationsProposal, why: str, notes: list[str]
) -> list[ExpectedGene]:
    genes = list(kept)
    by_symbol = {g.gene.upper(): g for g in kept}
    up = {g.strip().upper(): g.strip() for g in proposal.genes_up if g.strip()}
    down = {g.strip().upper(): g.strip() for g in proposal.genes_down if g.strip()}
    if both := sorted(up.keys() & down.keys()):
        notes.append(f"the model expected {', '.join(both)} both up and down; dropped")
    for direction, named in (("up", up), ("down", down)):
        for symbol, gene in named.items():
            if symbol in both:
                continue
            if not _GENE.match(gene):
                notes.append(f"the model named {gene[:80]!r} as a gene; not a gene symbol, dropped")
                continue
            if symbol in by_symbol:
                if by_symbol[symbol].direction != direction:
                    notes.append(
                        f"the model expected {gene} {direction}; the request's {by_symbol[symbol].direction} stands"
                    )
                continue
            expected = ExpectedGene(gene=gene, direction=direction, source="model", why=why)  # type: ignore[arg-type]
            genes.append(expected)
            by_symbol[symbol] = expected
    return genes


def _gene_sets(
    kept: list[ExpectedGeneSet], proposal: ExpectationsProposal, pack: KnowledgePack, why: str, notes: list[str]
) -> list[ExpectedGeneSet]:
    sets = list(kept)
    by_id = {s.set_id: s for s in kept}
    for key, direction in proposal.gene_sets.items():
        try:
            gene_set = pack.gene_set(key)
        except UnknownGeneSet as unknown:
            notes.append(f"the model named gene set {key[:200]!r}, which the pack does not have; dropped ({unknown})")
            continue
        if gene_set.set_id in by_id:
            if by_id[gene_set.set_id].direction != direction:
                notes.append(
                    f"the model expected {gene_set.name} ({gene_set.set_id}) {direction}; "
                    f"the {by_id[gene_set.set_id].source}'s {by_id[gene_set.set_id].direction} stands"
                )
            continue
        expected = ExpectedGeneSet(
            set_id=gene_set.set_id, name=gene_set.name, direction=direction, source="model",
            genes=len(gene_set.genes), why=why,
        )
        sets.append(expected)
        by_id[gene_set.set_id] = expected
    return sets


def _cell_type(
    kept: CellTypeTerm | None, proposed: str | None, pack: KnowledgePack, notes: list[str]
) -> CellTypeTerm | None:
    if not proposed or not proposed.strip():
        return kept
    term = pack.resolve_cell_type(proposed.strip())
    if term is None:
        notes.append(f"the model named cell type {proposed[:100]!r}, which the Cell Ontology in the pack does not have; dropped")
        return kept
    if kept is not None:
        if kept.ontology_id != term.ontology_id:
            notes.append(
                f"the model took the query cells for {term.label} ({term.ontology_id}); "
                f"the request's {kept.label} ({kept.ontology_id}) stands"
            )
        return kept
    return term.model_copy(update={"matched": proposed.strip(), "matched_by": "model"})


def _claims(
    proposal: ExpectationsProposal, pack: KnowledgePack, pages: list[Page], notes: list[str]
) -> list[DocumentClaim]:
    claims: list[DocumentClaim] = []
    for claim in proposal.claims:
        cited = f"{claim.document[:120]!r} p. {claim.page}"
        page = find_page(pages, claim.document, claim.page)
        if page is None:
            notes.append(f"claim citing {cited} dropped: the request has no such document page")
            continue
        if not quote_on_page(claim.quote, page.text):
            notes.append(f"claim citing {cited} dropped: its quote is not on that page")
            continue
        if (claim.gene is None) == (claim.set_id is None):
            notes.append(f"claim citing {cited} dropped: it must name one gene or one gene set")
            continue
        set_id = None
        if claim.set_id is not None:
            try:
                set_id = pack.gene_set(claim.set_id).set_id
            except UnknownGeneSet:
                notes.append(f"claim citing {cited} dropped: gene set {claim.set_id[:200]!r} is not in the pack")
                continue
        gene = claim.gene.strip() if claim.gene else None
        if gene is not None and not _GENE.match(gene):
            notes.append(f"claim citing {cited} dropped: {gene[:80]!r} is not a gene symbol")
            continue
        made = DocumentClaim(
            document=page.document, page=page.number, quote=claim.quote.strip(), gene=gene, set_id=set_id,
            direction=claim.direction,
        )
        if made not in claims:
            claims.append(made)
    return claims
