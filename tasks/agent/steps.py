"""The agent's steps as Prefect tasks: plan the run (or a round of the loop), set its expectations,
interpret its predictions.

Each step is a task whose result is persisted under a cache key made from its inputs and the
agent settings that shape the answer, so a retried flow run reads the earlier plan or findings
instead of paying for the same reasoning twice (the expectations' key holds the knowledge pack's
version too: a new pack is a new yardstick). With ``ANTHROPIC_API_KEY`` (or the Prefect Secret
block named by ``STACKFLOWS_AGENT__API_KEY_SECRET_BLOCK``) Claude does the work; without one the
offline planner and summary do, and say so. The key is read inside the task, never passed in.

Logs carry counts, names and token figures only: never the key, the question, documents or what
the model wrote.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Sequence
from typing import Any

from prefect import task
from prefect.context import TaskRunContext
from prefect.logging import get_run_logger

from clients.llm.claude import ClaudeClient
from clients.llm.settings import AgentSettings
from clients.ocr.models import DocumentText
from clients.settings import get_settings
from clients.storage import local_path_of, scheme_of
from inference.contract import PredictionSummary
from tasks.agent.claude import interpret_with_claude, plan_with_claude
from tasks.agent.expectations import expectations_with_claude
from tasks.agent.offline_findings import offline_findings
from tasks.agent.offline_planner import offline_plan
from tasks.agent.plan import Findings, RunPlan
from tasks.agent.plan_checks import PlanInvalid, check_plan, check_request
from tasks.agent.plan_data import PlanData
from tasks.agent.refine import refine_with_claude
from tasks.grounding.models import Expectations, GroundingEvaluation
from tasks.grounding.pack import KnowledgePack
from tasks.loop.models import RefinedPlan, RoundRecord
from tasks.request import AnalysisRequest
from tasks.staging import StagedInput

API_KEY_ENV = "ANTHROPIC_API_KEY"
# Part of the offline plans' cache key: bump it when the offline planner or summary changes what it
# writes, so persisted plans from older code are not served again.
OFFLINE_PLANNER_VERSION = 4
EXPECTATIONS_TASK = "set-expectations"
# Grounding settings that change the expectations (the pack itself is keyed by its version).
_EXPECTATIONS_SHAPING = ("offline_gene_sets",)
# Agent settings that change what a step answers; the others (prices, timeouts) do not invalidate results.
_ANSWER_SHAPING = (
    "model",
    "max_tokens",
    "temperature",
    "base_url",
    "max_tool_turns",
    "max_document_chars",
    "min_prompt_cells_per_split",
    "min_query_cells",
    "max_split_values",
    "default_num_steps",
)


def anthropic_api_key(settings: AgentSettings) -> str | None:
    """The API key from the environment, else from the configured Prefect Secret block, else None."""
    key = os.environ.get(API_KEY_ENV, "").strip()
    if key:
        return key
    if settings.api_key_secret_block:
        from prefect.blocks.system import Secret

        try:
            secret = Secret.load(settings.api_key_secret_block)
        except ValueError as missing:
            raise ValueError(
                f"STACKFLOWS_AGENT__API_KEY_SECRET_BLOCK names Secret block {settings.api_key_secret_block!r}, "
                "which does not exist: create it (prefect block create secret) or unset the setting"
            ) from missing
        return str(secret.get()).strip() or None
    return None


def planner_identity(settings: AgentSettings) -> dict[str, Any]:
    """Who would answer now: the offline code, or a model with these settings (never the key itself)."""
    if anthropic_api_key(settings) is None:
        return {"planner": "offline", "version": OFFLINE_PLANNER_VERSION}
    return {"planner": "claude", **settings.model_dump(include=set(_ANSWER_SHAPING))}


def _agent_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    settings = get_settings().agent
    payload = {
        "task": context.task.name,
        "who": planner_identity(settings),
        "limits": settings.model_dump(include=set(_ANSWER_SHAPING) - {"model", "base_url"}),
        "inputs": {name: _canonical(value) for name, value in sorted(parameters.items())},
    }
    if context.task.name == EXPECTATIONS_TASK:
        payload["pack"] = _pack_for(parameters["request"]).version
        payload["grounding"] = get_settings().grounding.model_dump(include=set(_EXPECTATIONS_SHAPING))
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
    return f"stackflows-agent-{context.task.name}-{digest}"


def _canonical(value: Any) -> Any:
    if isinstance(value, StagedInput):
        # Named by content: where validation read it from does not change the answer.
        return {"uri": value.uri, "sha256": value.sha256, "gene_overlap": value.gene_overlap}
    if isinstance(value, DocumentText):
        # Named by content and text: where its markdown went or how much OCR came from a cache does not matter.
        return {"uri": value.uri, "sha256": value.sha256, "pages": [[p.page_number, p.text] for p in value.pages]}
    if isinstance(value, (list, tuple)):
        return [_canonical(item) for item in value]
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, str) and _is_local_h5ad(value):
        # Staged URIs are content-addressed; a plain path may change under the same name.
        stat = local_path_of(value).stat()
        return {"uri": value, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return value


def _pack_for(request: AnalysisRequest) -> KnowledgePack:
    """The knowledge pack with the settings' and the request's GMT files (``load_pack`` caches it by
    content, so the cache key and the task body share one load)."""
    from tasks.grounding.pack import load_pack

    return load_pack(*_pack_uris(request))


def start_loading_pack(request: AnalysisRequest) -> threading.Thread:
    """Read the pack :func:`set_expectations` will use on a background thread, while the flow checks
    its inputs (join it before the step). Call it after the request's URIs are checked: it reads them."""
    from tasks.grounding.pack import start_loading_pack as start

    return start(*_pack_uris(request))


def _pack_uris(request: AnalysisRequest) -> tuple[str, list[str]]:
    grounding = get_settings().grounding
    return grounding.pack_uri, [*grounding.gene_set_uris, *request.gene_set_uris]


def _is_local_h5ad(value: str) -> bool:
    try:
        return value.endswith(".h5ad") and scheme_of(value) == "file" and local_path_of(value).is_file()
    except ValueError:
        return False


@task(name="plan-run", persist_result=True, cache_key_fn=_agent_cache_key)
def plan_run(
    request: AnalysisRequest,
    prompt: StagedInput | str,
    query: StagedInput | str,
    document_text: str = "",
) -> RunPlan:
    """Decide which cells and contexts answer the question, checked against the staged data.

    ``prompt``/``query`` are the staged inputs (or plain h5ad URIs); ``document_text`` is what OCR
    read from the request's documents. The request's explicit plan fields are checked first and
    always win; a plan that does not fit the data fails here, before any GPU job.
    """
    settings = get_settings().agent
    data = PlanData.from_inputs(prompt, query)
    check_request(request, data, settings)
    return _first_plan(request, data, document_text, settings)


@task(name="plan-round", persist_result=True, cache_key_fn=_agent_cache_key)
def plan_round(
    request: AnalysisRequest,
    prompt: StagedInput | str,
    query: StagedInput | str,
    document_text: str,
    history: list[RoundRecord],
    budget_note: str = "",
) -> RefinedPlan:
    """The next round's plan, or a reason to stop, from the rounds so far (``history``, in order).

    Round 1 (no history) is planned exactly as :func:`plan_run` plans a run. Later rounds: Claude reads
    the earlier rounds' plans, scores, DE and caveats and the ``budget_note`` (what is left), and
    proposes a plan or stops; without a key the offline refiner takes the next untried candidate. The
    result is persisted under a key over every parameter, so a retried run with the same history
    reads it back instead of asking again. A plan equal to a tried one is returned as it is: the
    loop's stopping rule names it.
    """
    logger = get_run_logger()
    settings = get_settings().agent
    data = PlanData.from_inputs(prompt, query)
    check_request(request, data, settings)
    if not history:
        plan = _first_plan(request, data, document_text, settings)
        return RefinedPlan(plan=plan, planned_by=plan.planned_by, usage=plan.usage)
    key = anthropic_api_key(settings)
    if key is None:
        from tasks.agent.offline_refiner import next_offline_plan

        logger.info("No %s: the offline refiner plans round %d", API_KEY_ENV, len(history) + 1)
        refined = next_offline_plan(request, data, history, settings)  # rounds: it builds on the best
    else:
        logger.info("Refining with %s after %d rounds", settings.model, len(history))
        with ClaudeClient(settings, api_key=key) as client:
            try:
                refined = refine_with_claude(client, request, data, history, document_text, budget_note)
            finally:
                logger.info("Refinement used %s", client.usage.line())
    if refined.plan is None:  # the reason is the planner's words: the report shows it, the logs do not
        logger.info("%s stops the loop after round %d", refined.planned_by, len(history))
        return refined
    _check_and_log(refined.plan, data, settings)
    return refined


def _first_plan(request: AnalysisRequest, data: PlanData, document_text: str, settings: AgentSettings) -> RunPlan:
    """The run's (or round 1's) plan: Claude with a key, else the offline planner; checked against ``data``."""
    logger = get_run_logger()
    key = anthropic_api_key(settings)
    if key is None:
        logger.info("No %s: the offline planner plans this run", API_KEY_ENV)
        plan = offline_plan(request, data, settings)
    else:
        logger.info("Planning with %s", settings.model)
        with ClaudeClient(settings, api_key=key) as client:
            try:
                plan = plan_with_claude(client, request, data, document_text)
            finally:  # what was spent is worth knowing, plan or no plan
                logger.info("Planning used %s", client.usage.line())
    _check_and_log(plan, data, settings)
    return plan


def _check_and_log(plan: RunPlan, data: PlanData, settings: AgentSettings) -> None:
    problems = check_plan(plan, data, settings)
    if problems:  # the planners check their own plans; this guards the contract
        raise PlanInvalid(f"The plan by {plan.planned_by} does not fit the data:", problems)
    get_run_logger().info(
        "Plan by %s: %d contexts of %r, %d prompt and %d query cells, %d steps",
        plan.planned_by,
        len(plan.split_values),
        plan.split_column,
        data.prompt.count(plan.prompt_obs_filter),
        data.query.count(plan.query_obs_filter),
        plan.num_steps,
    )


@task(name=EXPECTATIONS_TASK, persist_result=True, cache_key_fn=_agent_cache_key)
def set_expectations(
    request: AnalysisRequest, documents: list[DocumentText], query_values: Sequence[str] = ()
) -> Expectations:
    """What the question predicts, fixed once for the run: the yardstick every round is scored against.

    The request's own expectations always stand (an expected gene set the pack lacks fails here, before
    any GPU time). With a key Claude adds to them, searching the pack and ``documents`` (their OCR'd
    pages); without one, offline name matching does. ``query_values`` are the query cells' labels
    (e.g. the plan's query filter values) for resolving their cell type offline.
    """
    from tasks.grounding.expectations import offline_expectations, request_expectations

    logger = get_run_logger()
    settings = get_settings().agent
    pack = _pack_for(request)
    key = anthropic_api_key(settings)
    if key is None:
        logger.info("No %s: expectations from the request and offline name matching", API_KEY_ENV)
        expectations = offline_expectations(request, pack, query_values=list(query_values))
    else:
        base = request_expectations(request, pack)  # a bad request fails before any model call
        logger.info("Setting expectations with %s (%d documents)", settings.model, len(documents))
        with ClaudeClient(settings, api_key=key) as client:
            try:
                expectations = expectations_with_claude(client, request, pack, documents, base)
            finally:
                logger.info("Expectations used %s", client.usage.line())
    logger.info(
        "Expectations set by %s: %d genes, %d gene sets, cell type %s, %d claims, %d notes (pack %s)",
        expectations.set_by,
        len(expectations.genes),
        len(expectations.gene_sets),
        expectations.cell_type.ontology_id if expectations.cell_type else "none",
        len(expectations.claims),
        len(expectations.notes),
        expectations.pack_version,
    )
    return expectations


@task(name="interpret-predictions", persist_result=True, cache_key_fn=_agent_cache_key)
def interpret(
    plan: RunPlan,
    summary: PredictionSummary,
    question: str | None = None,
    evaluation: GroundingEvaluation | None = None,
    documents: list[str] | None = None,
) -> Findings:
    """Findings and caveats in markdown from the prediction summary, its DE and the score card.

    ``evaluation`` is the grounding's score card (computed by code; the model reads it, never makes
    one); ``documents`` are the documents' markdown (``DocumentText.markdown()``), which carries page
    numbers for citations. Says first if the model was untrained.
    """
    logger = get_run_logger()
    settings = get_settings().agent
    key = anthropic_api_key(settings)
    if key is None:
        logger.info("No %s: writing the offline summary of the predictions", API_KEY_ENV)
        findings = offline_findings(plan, summary, evaluation)
    else:
        with ClaudeClient(settings, api_key=key) as client:
            findings = interpret_with_claude(client, plan, summary, question, evaluation, documents or [])
    logger.info(
        "Findings by %s (%d caveats%s)%s",
        findings.written_by,
        len(findings.caveats),
        "; STACK model untrained" if not findings.model_trained else "",
        f"; {findings.usage.line()}" if findings.usage else "",
    )
    return findings
