"""The report as markdown and as one standalone, sanitised HTML page, in reading order."""

from __future__ import annotations

import base64
import html
from collections.abc import Callable, Mapping

from tasks.loop.table import describe_filter
from tasks.report.grounding_sections import (
    Section,
    de_sections,
    enrichment_sections,
    expectations_markdown,
    figure_section,
    in_round,
    report_caveats,
    score_card_markdown,
)
from tasks.report.model import AnalysisReport
from tasks.report.rounds import rounds_sections
from tasks.report_text import (
    md_inline,
    md_output,
    md_quote,
    model_markdown,
    plain,
    safe_html,
)


def no_url(uri: str) -> str | None:
    return None


def ordered_sections(report: AnalysisReport, url_for: Callable[[str], str | None] = no_url) -> list[Section]:
    plan, job, findings = report.plan, report.job, report.findings
    sections: list[Section] = []
    if not job.model_trained:
        sections.append(Section("warning", "\n".join([
            "# Untrained model: these results carry no biology",
            "",
            "> **The STACK checkpoint is untrained (randomly initialised).** The predictions and findings "
            "below show that the pipeline works; they say nothing about biology. Set "
            "`STACKFLOWS_MODEL__CHECKPOINT_URI` to a trained checkpoint for real results.",
        ])))  # fmt: skip
    sections.append(Section("question", f"# Analysis report\n\n## Question\n\n{md_quote(report.question)}"))
    if report.grounding is not None:
        sections.append(Section("score_card", score_card_markdown(report.grounding, report.shown_round)))
    sections += rounds_sections(report, url_for)
    if report.expectations is not None:
        sections.append(Section("expectations", expectations_markdown(report.expectations)))
    sections += de_sections(report, url_for)
    sections += enrichment_sections(report, url_for)
    sections.append(Section("plan", "\n".join([
        f"## Plan{in_round(report)}",
        f"- planned by: {md_inline(plan.planned_by)}",
        f"- contexts: {md_inline(plan.split_column)} = {md_inline(', '.join(plan.split_values))}",
        f"- prompt cells: {md_inline(describe_filter(plan.prompt_obs_filter))}",
        f"- query cells: {md_inline(describe_filter(plan.query_obs_filter))}",
        f"- steps: {plan.num_steps}, seed: {plan.seed}, precision: {plan.precision}",
        f"- why: {md_inline(plan.rationale)}",
    ])))  # fmt: skip
    sections.append(Section("job", "\n".join([
        f"## GPU job{in_round(report)}",
        f"- job id: {md_inline(job.job_id)} on {md_inline(job.device)} ({job.precision})",
        f"- predictions: {job.predictions_shape[0]} cells x {job.predictions_shape[1]} genes",
        *([f"- shards: {job.shards} (tasks of one job; wall time and peak memory are the largest shard's, "
           f"GPU-seconds their sum), merged in {job.merge_seconds:.1f} s on a CPU"] if job.shards > 1 else []),
        f"- wall time: {job.wall_seconds:.1f} s, GPU-seconds: {job.gpu_seconds:.1f}, "
        f"peak memory: {job.peak_memory_mb:.0f} MB",
        f"- model: {job.model_parameters:,} parameters, {'trained' if job.model_trained else 'UNTRAINED'}",
        *([f"- Spot preemptions: {job.preemptions} (each retried by itself: a new attempt into a fresh prefix)"]
          if job.preemptions else []),
    ])))  # fmt: skip
    findings_md = model_markdown(findings.markdown).strip()
    sections.append(Section("findings", f"## Findings ({md_inline(findings.written_by)})\n\n{findings_md}"))
    caveats = report_caveats(report)
    if caveats:
        sections.append(Section("caveats", "\n".join(["## Caveats", *[f"- {md_inline(c)}" for c in caveats]])))
    if "plot" in report.outputs:
        heading = f"## Query input vs predictions{in_round(report)}"
        sections.append(figure_section("plot", heading, "query input vs predictions", report.outputs["plot"], url_for))
    usage = report.llm_usage
    if usage:
        tokens = sum(u.input_tokens + u.output_tokens for u in usage)
        cost = sum(u.estimated_cost_usd for u in usage)
        line = f"- {sum(u.requests for u in usage)} requests, {tokens:,} tokens, ~${cost:.4f}"
    else:
        line = "- no language model was called"
    sections.append(Section("cost", f"## Agent cost\n{line}"))
    if report.documents:
        lines = [f"- {md_inline(d)}" for d in report.documents]
        sections.append(Section("documents", "\n".join(["## Documents read", *lines])))
    if report.outputs:
        lines = [f"- {md_inline(name)}: {md_output(uri, url_for(uri))}" for name, uri in report.outputs.items()]
        sections.append(Section("outputs", "\n".join(["## Outputs", *lines])))
    return sections


def report_sections(report: AnalysisReport, url_for: Callable[[str], str | None] = no_url) -> list[tuple[str, str]]:
    """The report as ``(name, markdown)`` sections, in reading order; ``url_for`` links outputs.

    Our own markdown shapes the page; everything a user, the data or a model wrote goes through
    :mod:`tasks.report_text`. An untrained model's warning is the first heading: nothing written by
    anyone else comes before it or can look like it. The score card, expectations, DE and
    enrichment follow the question: they are what the run found, by code. With several rounds of the
    closed loop, the Rounds table follows the score card, and what comes after is the best round's.
    """
    return [(s.name, s.markdown) for s in ordered_sections(report, url_for)]


def render_markdown(report: AnalysisReport, url_for: Callable[[str], str | None] = no_url) -> str:
    """The report as a reader wants it: the untrained-model warning first, then question, score card, DE, plan..."""
    return "\n\n".join(markdown for _, markdown in report_sections(report, url_for)) + "\n"


def render_html(report: AnalysisReport, plot_png: bytes | None = None, images: Mapping[str, bytes] | None = None) -> str:
    """A standalone page: every section sanitised, the figures embedded (data: URIs), no script allowed.

    ``images``: PNG bytes by the URI the report lists them under; ``plot_png`` is the main plot's.
    """
    images = dict(images or {})
    if plot_png is not None and "plot" in report.outputs:
        images.setdefault(report.outputs["plot"], plot_png)
    parts = []
    for section in ordered_sections(report):
        if section.figure is not None and section.figure[0] in images:
            uri, alt = section.figure
            data = base64.b64encode(images[uri]).decode()
            heading = safe_html(section.heading) if section.heading else ""
            parts.append(
                f'{heading}<figure><img src="data:image/png;base64,{data}" alt="{html.escape(plain(alt))}"></figure>'
            )
        else:
            parts.append(safe_html(section.markdown))
    return _HTML_PAGE.format(body="\n".join(parts))


# The page may load nothing but its own inline images and style: a script that slipped past the
# sanitiser would not run either.
_HTML_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>stackflows report</title>
<style>body{{font-family:sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}}img{{max-width:100%}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.2rem .5rem}}</style>
</head><body>
{body}
</body></html>
"""
