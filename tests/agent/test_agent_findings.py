"""The offline summary states the score card, the DE and the enrichment that Claude would read."""

from __future__ import annotations

from tasks.agent.offline_findings import offline_findings
from tasks.grounding.caveats import QUERY_AS_CONTROL
from tests.agent.grounding_examples import EVALUATION, PLAN, SUMMARY


def test_offline_findings_show_the_score_card_de_and_sets_and_say_no_model_wrote_them() -> None:
    findings = offline_findings(PLAN, SUMMARY, EVALUATION)
    md = findings.markdown

    assert findings.written_by == "offline summary (no model read the results)"
    assert "no language model read these results" in md
    # The score card in one table: every component, unassessed ones said so, and the composite.
    assert "composite 7/10" in md
    assert "| pathway coherence | 7.5 | GO:0034341 up in IFNG" in md
    assert "| target activation | 8.2 |" in md or "| target activation | 8.3 |" in md
    assert "| document support | not assessed | not assessed: no claims" in md
    # Per context: the reference, the significant counts, top genes with LFC and q.
    assert "| IFNG | control PBS (synthetic, paired) | 200 | 31 | 12 | CXCL10 (+2.40, q 1e-09), STAT1 (+1.30, q 2e-07)" in md
    assert "MYC (-0.70, q 0.004)" in md
    assert "| TNF | query input (unpaired) | 200 | 3 | 0 |" in md
    # The top enriched sets, most significant first.
    assert md.index("response to type II interferon (GO:0034341) | 9/40 | 2e-05 | up |") < md.index("GO:0033209")
    # A context compared with the query input brings the weaker-reference caveat, worded as the report words it.
    weak = [c for c in findings.caveats if "query-as-control" in c]
    assert weak == [QUERY_AS_CONTROL]
    assert any("descriptive" in c for c in findings.caveats)
    assert not any("untrained" in c for c in findings.caveats)


def test_a_card_without_a_composite_says_why() -> None:
    thin = EVALUATION.model_copy(update={"composite": None})
    assert "composite not assessed (fewer than two components)" in offline_findings(PLAN, SUMMARY, thin).markdown
