"""Score a prediction against the expectations and its reference: each component 0-10, by code.

Every component is computed from the job's DE table (``de.parquet``) and summary (``summary.json``)
alone, so a reviewer can recompute it (docs/grounding.md shows how). A component that cannot be
computed says why and has no score: nothing unassessed is ever given a default number. Component
scores are rounded to two decimals; the composite is their weighted mean, rounded half up.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from decimal import ROUND_HALF_UP, Decimal

import pandas as pd

from clients.grounding_settings import GroundingSettings
from inference.contract import DE_Q_THRESHOLD, PredictionSummary
from tasks.grounding.enrichment import enrichment, is_enriched
from tasks.grounding import caveats as certain
from tasks.grounding.models import (
    FORMULA_VERSION,
    ComponentName,
    Direction,
    EnrichmentRow,
    Expectations,
    GroundingEvaluation,
    ScoreComponent,
)
from tasks.grounding.pack import KnowledgePack

WEIGHT_FLOOR = 0.1  # target activation: a gene that barely moves still counts this much (|lfc|, log1p-CPM)
MARKER_MAX_DROP = math.log(2)  # identity: a marker may fall at most 2-fold in (CPM + 1), natural log
BACKTEST_METRIC = "pearson_delta"
REPORTED_SETS = 25  # enrichment rows kept per context and direction, beside every expected or claimed set

CAVEAT_UNTRAINED = certain.UNTRAINED
CAVEAT_DESCRIPTIVE = certain.DESCRIPTIVE_P
CAVEAT_QUERY_AS_CONTROL = certain.QUERY_AS_CONTROL


def score_prediction(
    expectations: Expectations,
    summary: PredictionSummary,
    de: pd.DataFrame,
    pack: KnowledgePack,
    settings: GroundingSettings,
    *,
    model_trained: bool,
) -> GroundingEvaluation:
    """The score card of one prediction: five components, the composite, the enrichment rows and caveats."""
    de = de[de["split_value"].isin(treated_contexts(de, summary))]
    claimed = [claim.set_id for claim in expectations.claims if claim.set_id]
    expected_sets = {gene_set.set_id: gene_set.direction for gene_set in expectations.gene_sets}
    rows = enrichment(de, pack, settings, expected=expected_sets, always_test=claimed)
    components = [
        pathway_coherence(expectations, de, rows, pack, settings),
        target_activation(expectations, de),
        identity_preservation(summary, de),
        document_support(expectations, de, rows),
        backtest(summary),
    ]
    reference, paired = reference_of(summary, de)
    caveats = [CAVEAT_UNTRAINED] if not model_trained else []
    caveats.append(CAVEAT_DESCRIPTIVE)
    if not paired:
        caveats.append(CAVEAT_QUERY_AS_CONTROL)
    if expectations.pack_version != pack.version:
        caveats.append(
            f"The expectations were set with knowledge pack {expectations.pack_version!r}; these scores use "
            f"{pack.version!r}."
        )
    keep = set(expected_sets) | set(claimed)
    return GroundingEvaluation(
        components=components,
        composite=composite(components, settings.weights),
        weights=dict(settings.weights),
        formula_version=FORMULA_VERSION,
        formula=formula_text(settings.weights),
        pack_version=pack.version,
        reference=reference,
        enrichment=reported_rows(rows, keep),
        caveats=caveats,
    )


# --- the components ------------------------------------------------------------------------------


def pathway_coherence(
    expectations: Expectations,
    de: pd.DataFrame,
    rows: Sequence[EnrichmentRow],
    pack: KnowledgePack,
    settings: GroundingSettings,
) -> ScoreComponent:
    """Expected sets enriched in the expected direction count for, in the opposite direction against."""
    name: ComponentName = "pathway_coherence"
    if not expectations.gene_sets:
        return _not_assessed(name, "no expected gene sets (the request names none and none were found for the question)")
    contexts = _contexts(de)
    if not contexts:
        return _not_assessed(name, "the DE table has no treated context")
    background = {gene.upper() for gene in de["gene"].astype(str)}
    in_background, outside = [], []
    for expected in expectations.gene_sets:
        gene_set = pack.gene_sets.get(expected.set_id)
        size = len(gene_set.genes & background) if gene_set else 0
        (in_background if size >= settings.min_set_size else outside).append(expected)
    details: dict[str, float | int | str] = {
        "expected sets": len(expectations.gene_sets),
        "expected sets in the background": len(in_background),
    }
    if outside:
        details["not in the background"] = ", ".join(f"{s.name} ({s.set_id})" for s in outside)
    if not in_background:
        return _not_assessed(
            name,
            f"none of the {len(outside)} expected gene set(s) has {settings.min_set_size} or more genes among the "
            "genes both the model and the input have",
            details,
        )
    enriched = {(r.split_value, r.direction, r.set_id) for r in rows if is_enriched(r)}
    by_key = {(r.split_value, r.direction, r.set_id): r for r in rows}
    per_context = []
    for context in contexts:
        agree = against = 0
        for expected in in_background:
            opposite = _opposite(expected.direction)
            if (context, expected.direction, expected.set_id) in enriched:
                agree += 1
                outcome = "for"
            elif (context, opposite, expected.set_id) in enriched:
                against += 1
                outcome = "against"
            else:
                outcome = "neither"
            details[f"{expected.name} in {context}"] = _set_outcome(by_key, context, expected.set_id, expected.direction, outcome)
        score = 10 * max(0, agree - against) / len(in_background)
        details[f"{context}: for"], details[f"{context}: against"] = agree, against
        details[f"{context}: score"] = _round(score)
        per_context.append(score)
    return ScoreComponent(
        name=name,
        score=_round(_mean(per_context)),
        basis=(
            f"Over-representation (decoupler ORA, BH across sets) of {len(in_background)} expected gene set(s) among "
            f"each context's up and down DE genes (q < {DE_Q_THRESHOLD}, at most {settings.top_de_genes} per direction), "
            f"against the {len(background)} genes both the model and the input have. Per context: "
            f"10 x max(0, sets enriched the expected way - sets enriched the opposite way) / {len(in_background)}, "
            f"averaged over {len(contexts)} context(s)."
            + (f" Not in the background: {details['not in the background']}." if outside else "")
        ),
        details=details,
    )


def target_activation(expectations: Expectations, de: pd.DataFrame) -> ScoreComponent:
    """Expected genes moving the expected way (q < 0.05), weighted by how much they move."""
    name: ComponentName = "target_activation"
    if not expectations.genes:
        return _not_assessed(name, "no expected genes (the request names none)")
    contexts = _contexts(de)
    if not contexts:
        return _not_assessed(name, "the DE table has no treated context")
    spelled = {gene.upper(): gene for gene in de["gene"].astype(str)}
    present = [g for g in expectations.genes if g.gene.upper() in spelled]
    missing = [g.gene for g in expectations.genes if g.gene.upper() not in spelled]
    details: dict[str, float | int | str] = {"expected genes": len(expectations.genes), "in the DE": len(present)}
    if missing:
        details["not in the model or input"] = ", ".join(missing)
    if not present:
        return _not_assessed(
            name, f"none of the expected genes is among the genes both the model and the input have: {', '.join(missing)}", details
        )
    per_context = []
    for context in contexts:
        table = de[de["split_value"] == context].set_index("gene")
        agreeing = total = 0.0
        for expected in present:
            row = table.loc[spelled[expected.gene.upper()]]
            lfc, q = float(row["log_fold_change"]), float(row["q_value"])
            weight = max(abs(lfc), WEIGHT_FLOOR)
            agrees = q < DE_Q_THRESHOLD and _sign(lfc) == _sign_of(expected.direction)
            total += weight
            agreeing += weight if agrees else 0.0
            details[f"{expected.gene} in {context}"] = (
                f"expected {expected.direction}; lfc {lfc:+.3f}, q {q:.2g}, weight {weight:.3f}: "
                + ("agrees" if agrees else "does not")
            )
        score = 10 * agreeing / total
        details[f"{context}: score"] = _round(score)
        per_context.append(score)
    return ScoreComponent(
        name=name,
        score=_round(_mean(per_context)),
        basis=(
            f"{len(present)} of {len(expectations.genes)} expected gene(s) are among the genes both the model and the "
            f"input have. A gene agrees when it moves the expected way with q < {DE_Q_THRESHOLD}; each weighs its "
            f"|log fold change| (at least {WEIGHT_FLOOR}). Per context: 10 x agreeing weight / total weight, averaged "
            f"over {len(contexts)} context(s)."
            + (f" Not in the model or input: {', '.join(missing)}." if missing else "")
        ),
        details=details,
    )


def identity_preservation(summary: PredictionSummary, de: pd.DataFrame) -> ScoreComponent:
    """The query cell type's own markers stay expressed in the treated predictions."""
    name: ComponentName = "identity_preservation"
    identity = summary.identity
    if identity is None or not identity.genes:
        return _not_assessed(
            name, "no markers of the query cell type (the run names no cell_type_column and query_cell_type)"
        )
    contexts = _contexts(de)
    if not contexts:
        return _not_assessed(name, "the DE table has no treated context")
    spelled = {gene.upper(): gene for gene in de["gene"].astype(str)}
    markers = [spelled[g.upper()] for g in identity.genes if g.upper() in spelled]
    details: dict[str, float | int | str] = {"markers": len(identity.genes), "markers in the DE": len(markers)}
    if not markers:
        return _not_assessed(name, f"none of the {len(identity.genes)} markers of {identity.cell_type} is in the DE table", details)
    per_context = []
    for context in contexts:
        table = de[de["split_value"] == context].set_index("gene")
        median = float(table["mean_treated"].median())
        lost = [
            m
            for m in markers
            if not (table.at[m, "mean_treated"] >= median and table.at[m, "log_fold_change"] >= -MARKER_MAX_DROP)
        ]
        score = 10 * (len(markers) - len(lost)) / len(markers)
        details[f"{context}: kept"] = len(markers) - len(lost)
        details[f"{context}: median mean_treated"] = round(median, 4)
        if lost:
            details[f"{context}: lost"] = ", ".join(lost)
        details[f"{context}: score"] = _round(score)
        per_context.append(score)
    return ScoreComponent(
        name=name,
        score=_round(_mean(per_context)),
        basis=(
            f"{len(markers)} markers of {identity.cell_type} ({identity.cell_type_column}; {identity.method}, "
            f"{identity.cells_of_type} cells of the type against {identity.cells_other} others). A marker is kept when "
            "its treated mean (log1p-CPM) is at least the median over the genes tested and it falls no more than "
            f"2-fold against the reference (log fold change >= -{MARKER_MAX_DROP:.2f}). Per context: 10 x kept / "
            f"markers, averaged over {len(contexts)} context(s)."
        ),
        details=details,
    )


def document_support(expectations: Expectations, de: pd.DataFrame, rows: Sequence[EnrichmentRow]) -> ScoreComponent:
    """Claims from the request's documents that the DE agrees or disagrees with."""
    name: ComponentName = "document_support"
    if not expectations.claims:
        if "model" not in expectations.set_by:
            return _not_assessed(name, "offline: no model read the documents")
        return _not_assessed(name, "the documents gave no claim about a gene or gene set that the DE can test")
    contexts = _contexts(de)
    if not contexts:
        return _not_assessed(name, "the DE table has no treated context")
    spelled = {gene.upper(): gene for gene in de["gene"].astype(str)}
    enriched = {(r.split_value, r.direction, r.set_id) for r in rows if is_enriched(r)}
    tested = {r.set_id for r in rows}
    details: dict[str, float | int | str] = {"claims": len(expectations.claims)}
    per_context = []
    for context in contexts:
        table = de[de["split_value"] == context].set_index("gene")
        agree = disagree = 0
        for i, claim in enumerate(expectations.claims, start=1):
            verdict = _claim_verdict(claim.gene, claim.set_id, claim.direction, context, table, spelled, enriched, tested)
            agree += verdict == "agrees"
            disagree += verdict == "disagrees"
            target = claim.gene or claim.set_id or "?"
            details[f"claim {i} in {context}"] = (
                f"{claim.document} p. {claim.page}: {target} {claim.direction} ({claim.quote[:120]}): {verdict}"
            )
        details[f"{context}: agree"], details[f"{context}: disagree"] = agree, disagree
        if agree + disagree:
            score = 10 * agree / (agree + disagree)
            details[f"{context}: score"] = _round(score)
            per_context.append(score)
    if not per_context:
        return _not_assessed(
            name,
            f"none of the {len(expectations.claims)} claim(s) names a gene or set that moved significantly either way",
            details,
        )
    return ScoreComponent(
        name=name,
        score=_round(_mean(per_context)),
        basis=(
            f"{len(expectations.claims)} claim(s) from the documents, each with its page. A gene claim agrees when the "
            f"gene moves the claimed way with q < {DE_Q_THRESHOLD} and disagrees when it moves the other way; a set "
            "claim likewise by enrichment. Per context: 10 x agree / (agree + disagree), averaged over the "
            f"{len(per_context)} context(s) where some claim was decided."
        ),
        details=details,
    )


def backtest(summary: PredictionSummary) -> ScoreComponent:
    """The prediction of real held-out cells, by cell-eval's pearson_delta."""
    name: ComponentName = "backtest"
    result = summary.backtest
    if result is None:
        return _not_assessed(name, "no backtest: the run held no real cells of the query type out of the prompt")
    if result.not_assessed:
        return _not_assessed(name, result.not_assessed)
    details: dict[str, float | int | str] = {"held-out cells": result.held_out_cells, "tool": result.tool}
    values = []
    for context in result.contexts:
        value = context.metrics.get(BACKTEST_METRIC)
        if value is None or not math.isfinite(value):
            details[f"{context.split_value}: {BACKTEST_METRIC}"] = "not computed"
            continue
        details[f"{context.split_value}: {BACKTEST_METRIC}"] = round(float(value), 4)
        details[f"{context.split_value}: real / predicted cells"] = f"{context.real_cells} / {context.predicted_cells}"
        values.append(10 * max(0.0, float(value)))
    if not values:
        return _not_assessed(name, f"no held-out context has cell-eval's {BACKTEST_METRIC}", details)
    return ScoreComponent(
        name=name,
        score=_round(_mean(values)),
        basis=(
            f"{result.held_out_cells} real {result.cell_type} cells ({result.cell_type_column}) held out of the prompt "
            f"and predicted. {BACKTEST_METRIC} ({result.tool or 'cell-eval'}): the Pearson correlation between the "
            "predicted and the real change against the control, over genes. Per context 10 x max(0, r), averaged over "
            f"{len(values)} context(s)."
        ),
        details=details,
    )


# --- the composite -------------------------------------------------------------------------------


def composite(components: Iterable[ScoreComponent], weights: Mapping[str, float]) -> int | None:
    """Weighted mean of the assessed components (weight > 0), rounded half up; None with fewer than two."""
    scored = [(c.score, weights.get(c.name, 0.0)) for c in components if c.score is not None]
    scored = [(score, weight) for score, weight in scored if weight > 0]
    if len(scored) < 2:
        return None
    mean = sum(score * weight for score, weight in scored) / sum(weight for _, weight in scored)
    return int(round_half_up(mean, 0))


def formula_text(weights: Mapping[str, float]) -> str:
    listed = ", ".join(f"{name} {weight:g}" for name, weight in weights.items())
    return (
        "composite = sum(weight x score) / sum(weight) over the assessed components, rounded half up to a whole "
        f"number; none with fewer than two assessed. Weights: {listed}."
    )


def round_half_up(value: float, places: int = 2) -> float:
    """``value`` rounded half up (6.5 -> 7, 7.49 -> 7), first cut to 9 decimals so float noise cannot tip it."""
    exact = Decimal(repr(float(value))).quantize(Decimal("1e-9"), rounding=ROUND_HALF_UP)
    return float(exact.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP))


# --- what the evaluation carries -----------------------------------------------------------------


def treated_contexts(de: pd.DataFrame, summary: PredictionSummary) -> list[str]:
    """The DE table's contexts, in the summary's order; the control is never one."""
    present = list(dict.fromkeys(de["split_value"].astype(str)))
    ordered = [s.split_value for s in summary.splits if s.split_value in present]
    ordered += [c for c in present if c not in ordered]
    return [c for c in ordered if c != summary.control_value]


def reference_of(summary: PredictionSummary, de: pd.DataFrame) -> tuple[str, bool]:
    """What the DE compared against, in words, and whether the comparison is paired."""
    kinds = set(de["reference"].astype(str)) if len(de) else {s.reference for s in summary.splits}
    control = summary.control_value or next((s.reference_value for s in summary.splits if s.reference_value), None)
    if kinds == {"synthetic_control"} or (not kinds and control):
        return f"synthetic control: {control}, paired by query cell", True
    return "query input (weaker: unpaired)", False


def reported_rows(rows: Sequence[EnrichmentRow], keep: set[str], per_group: int = REPORTED_SETS) -> list[EnrichmentRow]:
    """The most significant sets per context and direction, and every row of an expected or claimed set."""
    counts: dict[tuple[str, str], int] = {}
    kept = []
    for row in rows:  # enrichment() orders each (context, direction) group by p
        group = (row.split_value, row.direction)
        counts[group] = counts.get(group, 0) + 1
        if counts[group] <= per_group or row.set_id in keep:
            kept.append(row)
    return kept


# --- helpers -------------------------------------------------------------------------------------


def _claim_verdict(
    gene: str | None,
    set_id: str | None,
    direction: Direction,
    context: str,
    table: pd.DataFrame,
    spelled: Mapping[str, str],
    enriched: set[tuple[str, str, str]],
    tested: set[str],
) -> str:
    if gene:
        if gene.upper() not in spelled:
            return "not testable (gene not in the model or input)"
        row = table.loc[spelled[gene.upper()]]
        if float(row["q_value"]) >= DE_Q_THRESHOLD:
            return f"undecided (q {float(row['q_value']):.2g})"
        moved = _sign(float(row["log_fold_change"]))
        return "agrees" if moved == _sign_of(direction) else "disagrees"
    if set_id:
        if (context, direction, set_id) in enriched:
            return "agrees"
        if (context, _opposite(direction), set_id) in enriched:
            return "disagrees"
        return "undecided (not enriched either way)" if set_id in tested else "not testable (set not in the background)"
    return "not testable (names no gene or set)"


def _set_outcome(
    by_key: Mapping[tuple[str, str, str], EnrichmentRow], context: str, set_id: str, direction: str, outcome: str
) -> str:
    parts = []
    for side in ("up", "down"):
        row = by_key.get((context, side, set_id))
        parts.append(f"{side} q {row.q_value:.2g} ({row.overlap}/{row.set_size})" if row else f"{side} not tested")
    return f"expected {direction}; " + ", ".join(parts) + f": {outcome}"


def _not_assessed(
    name: ComponentName, why: str, details: dict[str, float | int | str] | None = None
) -> ScoreComponent:
    return ScoreComponent(name=name, score=None, basis=f"not assessed: {why}", details=details or {})


def _contexts(de: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(de["split_value"].astype(str)))


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _round(value: float) -> float:
    return round_half_up(value, 2)


def _sign(value: float) -> int:
    return (value > 0) - (value < 0)


def _sign_of(direction: str) -> int:
    return 1 if direction == "up" else -1


def _opposite(direction: Direction) -> Direction:
    return "down" if direction == "up" else "up"
