"""What the question predicts, from the request and (offline) from words alone.

Expectations are fixed once per run, before any GPU time, so an expected gene set the pack does not
have fails here (:class:`ExpectationsInvalid`), while an expected gene the pack does not know is only
noted: whether the model and the input have it is decided against the DE background at scoring.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from clients.settings import get_settings
from tasks.grounding.models import CellTypeTerm, Direction, ExpectedGene, ExpectedGeneSet, Expectations
from tasks.grounding.pack import GeneSet, KnowledgePack, UnknownGeneSet
from tasks.request import AnalysisRequest

OFFLINE_SET_BY = "offline name matching"

# Words that carry no topic: a gene set sharing only these with the question is no match.
_STOPWORDS = frozenset(
    """
    a about above after again against all also am an and any are as at be been before being below between both but
    by can cause caused causes could did do does doing during each effect effects expect expected few for from
    further had has have having he her here how i if in into is it its look looks may might more most my no nor not
    of off on once only or other our out over own same she should so some such than that the their them then there
    these they this those through to too under until up very was we were what when where which while who whom why
    will with would you your
    cell cells cellular gene genes expression expressed express level levels context contexts condition conditions
    treatment treated treat response responses change changes changed happen happens predict predicted prediction
    show shows state states type types sample samples data
    """.split()
)
# Question words that say the expected change is a decrease.
_DECREASE_WORDS = frozenset(
    """
    decrease decreases decreased decreasing down downregulate downregulated downregulation reduce reduces reduced
    reduction lower lowers lowered loss lose suppress suppresses suppressed suppression inhibit inhibits inhibited
    inhibition repress represses repressed repression deplete depleted depletion block blocks blocked silence
    silenced attenuate attenuated diminish diminished
    """.split()
)
# Ontology terms too generic to say what the query cells are.
_GENERIC_CELL_TERMS = frozenset({"CL:0000000", "CL:0000003", "CL:0000255", "CL:0000548"})
_MAX_CELL_TYPE_WORDS = 4


class ExpectationsInvalid(ValueError):
    """The request names expectations the pack cannot give (an unknown gene set); known before any GPU time."""


def request_expectations(request: AnalysisRequest, pack: KnowledgePack) -> Expectations:
    """The request's own expected genes, gene sets and query cell type, checked against the pack."""
    notes: list[str] = []
    genes = _request_genes(request, pack, notes)
    gene_sets = _request_gene_sets(request, pack)
    cell_type = None
    if request.query_cell_type:
        cell_type = pack.resolve_cell_type(request.query_cell_type)
        if cell_type is None:
            notes.append(_no_cell_type_note(request.query_cell_type))
    return Expectations(
        genes=genes,
        gene_sets=gene_sets,
        cell_type=cell_type,
        notes=notes,
        set_by="request",
        pack_version=pack.version,
    )


def offline_expectations(
    request: AnalysisRequest, pack: KnowledgePack, *, query_values: Sequence[str] = ()
) -> Expectations:
    """The request's expectations, plus what name matching finds where the request gives none of that kind.

    Gene sets: those whose names share the question's topic words; "down" when the shared words come
    after a word such as decrease, suppress or inhibit, else "up". Cell type: an exact label or synonym of the request's
    query_cell_type, else of ``query_values`` (the query filter's values), else of the question's words.
    """
    base = request_expectations(request, pack)
    notes = list(base.notes)
    offline = False

    cell_type = base.cell_type
    if cell_type is None:
        values = [*query_values, *_single_filter_values(request)]
        cell_type = offline_cell_type(values, request.question, pack)
        if cell_type is not None:
            offline = True
            notes.append(f"query cell type {cell_type.label} ({cell_type.ontology_id}) from {cell_type.matched!r} (offline)")

    gene_sets = base.gene_sets
    limit = get_settings().grounding.offline_gene_sets
    if not gene_sets and limit > 0:
        # The query's own cell type is what the question is about, not a process it predicts.
        cell_words = _stems(cell_type.label) | _stems(cell_type.matched) if cell_type else set()
        gene_sets = offline_gene_sets(request.question, pack, limit, ignore=cell_words)
        offline = offline or bool(gene_sets)

    return base.model_copy(
        update={
            "gene_sets": gene_sets,
            "cell_type": cell_type,
            "notes": notes,
            "set_by": f"request + {OFFLINE_SET_BY}" if offline else "request",
        }
    )


def query_type_of(request: AnalysisRequest) -> tuple[str, str] | None:
    """The (cell_type_column, value) the query cells are, when the request says so.

    The request's cell_type_column and query_cell_type, else a query_obs_filter that keeps one value of
    cell_type_column, else a query_obs_filter of one column with one value.
    """
    if request.cell_type_column and request.query_cell_type:
        return request.cell_type_column, request.query_cell_type
    filters = request.query_obs_filter or {}
    if request.cell_type_column and len(filters.get(request.cell_type_column) or []) == 1:
        return request.cell_type_column, filters[request.cell_type_column][0]
    if len(filters) == 1:
        ((column, values),) = filters.items()
        if len(values) == 1:
            return column, values[0]
    return None


def offline_gene_sets(
    question: str, pack: KnowledgePack, limit: int, *, ignore: set[str] = frozenset()
) -> list[ExpectedGeneSet]:
    """Up to ``limit`` of the pack's gene sets whose names share the question's topic words.

    ``ignore``: word stems that do not count as shared (the query's cell type).
    """
    words = [word for word in topic_words(question) if _stem(word) not in ignore]
    stems = {_stem(word) for word in words}
    if not words or limit <= 0:
        return []
    lowered = _decreased_stems(question)
    chosen: list[ExpectedGeneSet] = []
    for gene_set in pack.search_gene_sets(" ".join(words), limit=max(limit * 5, 20)):
        shared = sorted(stems & _stems(gene_set.name))
        if not shared:  # the search may match loosely; only a shared topic word counts here
            continue
        direction: Direction = "down" if lowered & set(shared) else "up"
        why = f"offline: its name shares {', '.join(shared)} with the question"
        chosen.append(_expected_set(gene_set, direction, "offline", why))
        if len(chosen) == limit:
            break
    return chosen


def offline_cell_type(values: Iterable[str], question: str, pack: KnowledgePack) -> CellTypeTerm | None:
    """The first of ``values``, then of the question's word runs (longest first), that names a cell type."""
    for value in values:
        term = pack.resolve_cell_type(value)
        if term is not None and term.ontology_id not in _GENERIC_CELL_TERMS:
            return term
    tokens = re.findall(r"[A-Za-z0-9+\-]+", question)
    for size in range(min(_MAX_CELL_TYPE_WORDS, len(tokens)), 0, -1):
        for start in range(len(tokens) - size + 1):
            run = tokens[start : start + size]
            if all(token.lower() in _STOPWORDS for token in run):
                continue
            text = " ".join(run)
            term = pack.resolve_cell_type(text)
            if term is not None and term.ontology_id not in _GENERIC_CELL_TERMS and _names_exactly(text, term, pack):
                return term
    return None


def _names_exactly(text: str, term: CellTypeTerm, pack: KnowledgePack) -> bool:
    """Whether ``text`` is the term's label or a synonym (plurals and '+' spelled out aside), not a looser match:
    a question's 'inflammatory' is no 'inflammatory cell'."""
    ontology = pack.cell_types.get(term.ontology_id)
    names = [term.label, *(ontology.synonyms if ontology else ())]
    return _cell_words(text) in {_cell_words(name) for name in names}


def _cell_words(text: str) -> tuple[str, ...]:
    text = text.lower().replace("+", " positive ")
    return tuple(_stem(word) for word in re.findall(r"[a-z0-9]+", text))


def topic_words(text: str) -> list[str]:
    """The words of ``text`` that can say what it is about, lower case, in order: no stopwords, no 'decrease'."""
    words = [w for w in re.findall(r"[a-z0-9]+(?:-[a-z0-9]+)*", text.lower())]
    parts = [part for word in words for part in word.split("-")]
    kept = [w for w in parts if w not in _STOPWORDS and w not in _DECREASE_WORDS and _stem(w) not in _STOPWORDS]
    return list(dict.fromkeys(w for w in kept if len(w) >= 3 or any(ch.isdigit() for ch in w)))


def _stems(text: str) -> set[str]:
    return {_stem(word) for word in re.findall(r"[a-z0-9]+", text.lower())}


def _stem(word: str) -> str:
    """Plural to singular, crudely but the same way on both sides: 'interferons' -> 'interferon'."""
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def _decreased_stems(question: str) -> set[str]:
    """Stems of the words after the question's first 'decrease' word ('... suppress the inflammatory response')."""
    words = re.findall(r"[a-z0-9]+", question.lower())
    first = next((i for i, word in enumerate(words) if word in _DECREASE_WORDS), None)
    return set() if first is None else {_stem(word) for word in words[first + 1 :]}


def _request_genes(request: AnalysisRequest, pack: KnowledgePack, notes: list[str]) -> list[ExpectedGene]:
    up = _unique(request.expected_up or [])
    down = _unique(request.expected_down or [])
    both = sorted({g.upper() for g in up} & {g.upper() for g in down})
    if both:
        raise ExpectationsInvalid(
            f"expected_up and expected_down both name {', '.join(both)}: a gene is expected to move one way; "
            "remove it from one of the lists"
        )
    unknown = _outside_the_pack([*up, *down], pack)
    if unknown:
        notes.append(
            f"expected gene(s) {', '.join(unknown)} are in none of the pack's gene sets; whether the model and the "
            "input have them is decided against the DE background when scoring"
        )
    return [
        *(ExpectedGene(gene=g, direction="up", source="request", why="expected_up in the request") for g in up),
        *(ExpectedGene(gene=g, direction="down", source="request", why="expected_down in the request") for g in down),
    ]


def _outside_the_pack(genes: list[str], pack: KnowledgePack) -> list[str]:
    """The genes no gene set of the pack has (the union of its 9k sets is only built when there are genes to look up)."""
    if not genes:
        return []
    known = set().union(*(gene_set.genes for gene_set in pack.gene_sets.values()))
    return [g for g in genes if g.upper() not in known]


def _request_gene_sets(request: AnalysisRequest, pack: KnowledgePack) -> list[ExpectedGeneSet]:
    chosen: list[ExpectedGeneSet] = []
    problems: list[str] = []
    for key, direction in (request.expected_gene_sets or {}).items():
        try:
            gene_set = pack.gene_set(key)
        except UnknownGeneSet as exc:
            problems.append(str(exc) or f"gene set {key!r} is not in the pack; {_suggestions(key, pack)}")
            continue
        if any(existing.set_id == gene_set.set_id for existing in chosen):
            continue
        chosen.append(_expected_set(gene_set, direction, "request", f"expected_gene_sets in the request: {key!r}"))
    if problems:
        raise ExpectationsInvalid(
            f"expected_gene_sets names {len(problems)} gene set(s) the knowledge pack does not have: "
            + " | ".join(problems)
        )
    return chosen


def _suggestions(key: str, pack: KnowledgePack) -> str:
    close = pack.search_gene_sets(key, limit=3)
    if not close:
        return "no set has a similar name: add a GMT file that has it (gene_set_uris)"
    return "closest: " + ", ".join(f"{s.name} ({s.set_id})" for s in close)


def _expected_set(gene_set: GeneSet, direction: Direction, source: str, why: str) -> ExpectedGeneSet:
    return ExpectedGeneSet(
        set_id=gene_set.set_id,
        name=gene_set.name,
        direction=direction,
        source=source,  # type: ignore[arg-type]  # "request" or "offline"
        genes=len(gene_set.genes),
        why=why,
    )


def _single_filter_values(request: AnalysisRequest) -> list[str]:
    query_type = query_type_of(request)
    return [query_type[1]] if query_type else []


def _no_cell_type_note(text: str) -> str:
    return f"query_cell_type {text!r} matches no Cell Ontology term; identity is scored from the data's own markers"


def _unique(genes: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    kept = []
    for gene in genes:
        if gene.upper() not in seen:
            seen.add(gene.upper())
            kept.append(gene)
    return kept
