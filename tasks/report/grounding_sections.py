"""The report's grounding sections: the score card, the expectations, DE per context, enrichment, caveats."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from inference.contract import DE_Q_THRESHOLD
from tasks.grounding import caveats as certain
from tasks.grounding.models import (
    ComponentName,
    EnrichmentRow,
    Expectations,
    GroundingEvaluation,
)
from tasks.report.model import AnalysisReport, TopGene
from tasks.report_text import (
    md_image,
    md_inline,
    md_table,
)

# Each ``*_rows`` function gives plain text cells (our figures and the data's words); the markdown
# tables and the Prefect table artifacts escape every cell, so both show the same thing.

COMPONENTS: tuple[ComponentName, ...] = (
    "pathway_coherence", "target_activation", "identity_preservation", "document_support", "backtest",
)  # fmt: skip
NOT_ASSESSED = "not assessed"
ENRICHMENT_ROWS_SHOWN = 25


def _label(name: str) -> str:
    return name.replace("_", " ")


def _num(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def in_round(report: AnalysisReport) -> str:
    """`` (round 2)`` after a heading when the loop ran more than one round: what follows is that round's."""
    return f" (round {report.shown_round})" if report.shown_round is not None else ""


def score_text(score: float | None) -> str:
    """``7.5 / 10``, or ``not assessed``: an unassessed score is never shown as a number."""
    return NOT_ASSESSED if score is None else f"{score:.1f} / 10"


def reference_text(reference: str | None, reference_value: str | None = None) -> str:
    """What a DE compared against, in words; query-as-control is named as the weaker comparison."""
    if reference == "synthetic_control":
        under = f" generated under {reference_value!r}" if reference_value else ""
        return f"synthetic control (the query cells{under}, same job and seed, paired by query cell)"
    if reference in ("query_input", None):
        return "query input (query-as-control: weaker than a synthetic control)"
    weaker = is_query_as_control(reference) and "weaker" not in reference.casefold()
    return reference + (" (query-as-control: weaker than a synthetic control)" if weaker else "")


def is_query_as_control(reference: str) -> bool:
    """``query_input``, or the grounding's words for it ("query input (weaker: unpaired)"); a synthetic
    control's words name the query too ("paired by query cell"), so they are told apart by "synthetic"."""
    words = reference.casefold()
    return "synthetic" not in words and "query" in words


def score_card_rows(evaluation: GroundingEvaluation) -> list[dict[str, str]]:
    """One row per component in a fixed order (a missing one is "not assessed"), then the composite."""
    rows = []
    for name in COMPONENTS:
        component = evaluation.component(name)
        score = component.score if component is not None else None
        weight = evaluation.weights.get(name)
        weight_text = "" if weight is None else f"{weight:g}" + (" (not counted)" if score is None else "")
        basis = component.basis if component is not None else "not computed for this run"
        rows.append({"component": _label(name), "score": score_text(score), "weight": weight_text, "basis": basis})
    assessed = [c for c in evaluation.components if c.assessed]
    if evaluation.composite is None:
        composite, basis = NOT_ASSESSED, f"needs at least two assessed components; {len(assessed)} assessed"
    else:
        composite = f"{evaluation.composite} / 10"
        basis = "weighted mean of the assessed components, rounded half up: " + ", ".join(
            _label(c.name) for c in assessed
        )
    rows.append({"component": "composite", "score": composite, "weight": "", "basis": basis})
    return rows


def de_gene_rows(top_genes: list[TopGene]) -> list[dict[str, str]]:
    """The top genes per context with their DE figures (the ``de-genes`` artifact, the DE tables)."""
    return [
        {
            "context": g.split_value,
            "direction": g.direction,
            "gene": g.gene,
            "log_fold_change": _num(g.log_fold_change, ".3f"),
            "mean_treated": _num(g.mean_treated, ".3f"),
            "mean_reference": _num(g.mean_reference, ".3f"),
            "q_value": _num(g.q_value, ".2e"),
            "fraction_same_direction": _num(g.fraction_same_direction, ".2f"),
            "reference": reference_text(g.reference, g.reference_value) if g.reference else "",
            "test": g.test,
        }
        for g in top_genes
    ]


def _expected_text(row: EnrichmentRow) -> str:
    if row.expected is None:
        return ""
    return "yes" if row.expected == row.direction else f"no (expected {row.expected})"


def top_enrichment(rows: list[EnrichmentRow], limit: int = ENRICHMENT_ROWS_SHOWN) -> list[EnrichmentRow]:
    """The rows a reader looks at first: every expected set, then the rest by q (then overlap)."""
    ranked = sorted(rows, key=lambda r: (r.expected is None, r.q_value, -r.overlap))
    return ranked[:limit]


def enrichment_rows(rows: list[EnrichmentRow]) -> list[dict[str, str]]:
    return [
        {
            "context": r.split_value,
            "set": r.name,
            "set_id": r.set_id,
            "direction": r.direction,
            "overlap": f"{r.overlap} / {r.set_size}",
            "q_value": f"{r.q_value:.2e}",
            "expected": _expected_text(r),
        }
        for r in top_enrichment(rows)
    ]


def _table(rows: list[dict[str, str]], columns: dict[str, str]) -> str:
    """``columns``: row key -> header."""
    return md_table(list(columns.values()), [[row[key] for key in columns] for row in rows])


def _normal(text: str) -> str:
    return " ".join(text.split()).casefold()


def _query_as_control(report: AnalysisReport) -> bool:
    if report.grounding is not None and is_query_as_control(report.grounding.reference):
        return True
    return any(g.reference == "query_input" for g in report.top_genes)


def report_caveats(report: AnalysisReport) -> list[str]:
    """Every caveat once: the findings', the flow's, the grounding's, and the three the grounding
    always needs (untrained model, descriptive p-values, query-as-control) when nobody said them."""
    caveats = [*report.findings.caveats, *report.caveats, *(report.grounding.caveats if report.grounding else [])]
    has_statistics = report.grounding is not None or any(g.q_value is not None for g in report.top_genes)
    needed = [
        ("untrained", certain.UNTRAINED, not report.job.model_trained),
        ("descriptive", certain.DESCRIPTIVE_P, has_statistics),
        ("weaker", certain.QUERY_AS_CONTROL, has_statistics and _query_as_control(report)),
    ]
    for keyword, caveat, applies in needed:
        if applies and not any(keyword in _normal(c) for c in caveats):
            caveats.append(caveat)
    seen: set[str] = set()
    unique = []
    for caveat in caveats:
        if _normal(caveat) not in seen:
            seen.add(_normal(caveat))
            unique.append(caveat)
    return unique


def score_card_markdown(evaluation: GroundingEvaluation, round_k: int | None = None) -> str:
    """The score card; ``round_k``: the round it is from, named in its heading when the loop ran several."""
    weights = ", ".join(f"{md_inline(_label(name))} {weight:g}" for name, weight in evaluation.weights.items())
    return "\n".join([
        "## Score card" + (f" (round {round_k})" if round_k is not None else ""),
        "",
        "Each score is 0-10, computed by code from the DE and the expectations (never by a language model); "
        "a component that could not be assessed says why and gets no number.",
        "",
        _table(score_card_rows(evaluation), {"component": "component", "score": "score", "weight": "weight", "basis": "basis"}),
        "",
        f"- composite weights: {weights or 'none set'} (unassessed components do not count)",
        f"- formula: {md_inline(evaluation.formula_version)}, knowledge pack: {md_inline(evaluation.pack_version)}",
        f"- reference: {md_inline(reference_text(evaluation.reference))}",
    ])  # fmt: skip


def expectations_markdown(expectations: Expectations) -> str:
    lines = [
        "## Expectations",
        "",
        f"- set by: {md_inline(expectations.set_by)}, knowledge pack: {md_inline(expectations.pack_version)}",
    ]
    cell_type = expectations.cell_type
    if cell_type is None:
        lines.append("- query cell type: not resolved to the Cell Ontology")
    else:
        lines.append(
            f"- query cell type: {md_inline(cell_type.ontology_id)} {md_inline(cell_type.label)} "
            f"(from {md_inline(repr(cell_type.matched))} by {md_inline(cell_type.matched_by)})"
        )
    if expectations.genes:
        rows = [[g.gene, g.direction, g.source, g.why] for g in expectations.genes]
        lines += ["", "### Genes expected to move", "", md_table(["gene", "expected", "said by", "why"], rows)]
    if expectations.gene_sets:
        rows = [[s.name, s.set_id, s.direction, str(s.genes), s.source, s.why] for s in expectations.gene_sets]
        lines += ["", "### Gene sets expected to move", "", md_table(["set", "id", "expected", "genes", "said by", "why"], rows)]
    if expectations.claims:
        rows = [
            [c.document, str(c.page), c.quote, c.gene or c.set_id or "", c.direction] for c in expectations.claims
        ]
        lines += ["", "### Claims in the documents", "", md_table(["document", "page", "claim", "gene or set", "direction"], rows)]
    if not (expectations.genes or expectations.gene_sets or expectations.claims):
        lines.append("- no genes, gene sets or claims were expected: target activation and pathway coherence go unassessed")
    if expectations.notes:
        lines += ["", "### Notes", "", *[f"- {md_inline(n)}" for n in expectations.notes]]
    return "\n".join(lines)


def _contexts(report: AnalysisReport) -> list[str]:
    """Treated contexts in the order the summary lists them, then any only the DE table has."""
    return list(dict.fromkeys([*(g.split_value for g in report.top_genes), *report.volcano_plots]))


_DE_COLUMNS = {
    "direction": "direction", "gene": "gene", "log_fold_change": "LFC", "mean_treated": "mean treated",
    "mean_reference": "mean reference", "q_value": "q", "fraction_same_direction": "fraction same direction",
}  # fmt: skip


class Section(NamedTuple):
    """A part of the report; a figure section also names the image it shows, for the HTML to embed."""

    name: str
    markdown: str
    figure: tuple[str, str] | None = None  # (uri, alt text)
    heading: str = ""


def figure_section(name: str, heading: str, alt: str, uri: str, url_for: Callable[[str], str | None]) -> Section:
    url = url_for(uri)
    shown = md_image(alt, url) if url else f"{md_inline(alt)}: {md_inline(uri)}"
    return Section(name, f"{heading}\n\n{shown}" if heading else shown, (uri, alt), heading)


def de_sections(report: AnalysisReport, url_for: Callable[[str], str | None]) -> list[Section]:
    contexts = _contexts(report)
    if not contexts:
        return []
    sections = [Section("de", "\n".join([
        f"## Differential expression{in_round(report)}",
        "",
        "Each treated context's predictions against its reference, on log1p-CPM: LFC is the log fold change, "
        f"q is Benjamini-Hochberg across the genes tested in the context (significant: q below {DE_Q_THRESHOLD:g}), "
        "fraction same direction is the share of cells that moved the way the mean did. "
        "Every gene tested is in the DE table among the outputs.",
    ]))]  # fmt: skip
    rows = de_gene_rows(report.top_genes)
    for index, context in enumerate(contexts, 1):
        lines = [f"### Context: {md_inline(context)}"]
        genes = [g for g in report.top_genes if g.split_value == context]
        if genes and genes[0].reference is not None:
            lines.append(f"\n- reference: {md_inline(reference_text(genes[0].reference, genes[0].reference_value))}")
        if genes and genes[0].test:
            lines.append(f"- test: {md_inline(genes[0].test)}")
        if genes:
            lines += ["", _table([r for r in rows if r["context"] == context], _DE_COLUMNS)]
        sections.append(Section(f"de_context_{index}", "\n".join(lines)))
        if context in report.volcano_plots:
            alt = f"volcano plot of {context}"
            sections.append(figure_section(f"volcano_{index}", "", alt, report.volcano_plots[context], url_for))
    return sections


_ENRICHMENT_COLUMNS = {
    "context": "context", "set": "set", "set_id": "id", "direction": "direction", "overlap": "overlap / size",
    "q_value": "q", "expected": "expected?",
}  # fmt: skip


def enrichment_sections(report: AnalysisReport, url_for: Callable[[str], str | None]) -> list[Section]:
    evaluation = report.grounding
    if evaluation is None:
        return []
    lines = [
        f"## Enrichment{in_round(report)}",
        "",
        "Over-representation of each gene set among a context's up or down DE genes, against the background of "
        "genes both the model and the input have; q is Benjamini-Hochberg across the sets tested for that "
        "context and direction. Expected sets come first.",
        "",
    ]
    if evaluation.enrichment:
        lines.append(_table(enrichment_rows(evaluation.enrichment), _ENRICHMENT_COLUMNS))
        hidden = len(evaluation.enrichment) - len(top_enrichment(evaluation.enrichment))
        if hidden > 0:
            lines.append(f"\n{hidden} more rows are in report.json.")
    else:
        lines.append(
            "No gene set was tested: enrichment tests each context's DE genes with q < 0.05, and no context had any."
        )
    sections = [Section("enrichment", "\n".join(lines))]
    if "enrichment_plot" in report.outputs:
        uri = report.outputs["enrichment_plot"]
        sections.append(figure_section("enrichment_plot", "", "top gene sets by q", uri, url_for))
    return sections
