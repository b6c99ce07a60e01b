"""The analysis run: a question and two h5ad files in, a report on what STACK predicts out.

Read it as the run itself:

1. check the model files and the inputs, then stage the inputs, before anything costly;
2. read the request's documents (OCR), for the agent;
3. fix the expectations: what the question predicts (genes, gene sets, the query's cell type), the
   yardstick the prediction is scored against; an unknown gene set or a bad GMT fails here;
4. the closed loop, a subflow per round (``flows/analysis_round.py``): the agent plans which cells,
   contexts and control answer the question (later rounds refine the plan from the scores), STACK
   runs on a GPU and computes the DE against the reference, the markers and the backtest, and the
   prediction is scored by code (never by the model); the loop stops when a rule says enough;
5. the agent interprets the best round (not the last), and the report shows every round.

Every task result is persisted to storage every worker can read, so a Retry from the dashboard (or
``POST /runs/{id}/retry``) skips what is done: inputs are not uploaded again, the agent is not paid
twice, a finished round is replayed, a GPU job is polled, not submitted again. Cancelling the run
cancels the running round's GPU job; earlier rounds' outputs stay.
"""

# No `from __future__ import annotations` here: Prefect validates the flow's parameters against its
# annotations, and a flow loaded from its entrypoint (by a worker) cannot resolve them as strings.
from prefect import flow
from prefect.context import FlowRunContext

from clients.loop_settings import LoopSettings
from clients.settings import get_settings
from clients.storage import join_uri
from flows.analysis_round import LoopLimits, analysis_round
from flows.background_imports import SUBFLOW_START, import_in_background
from flows.faults import fault_point
from flows.stack_inference import cancel_gpu_jobs_of_flow_run
from tasks.agent.steps import interpret, set_expectations, start_loading_pack
from tasks.grounding.models import Expectations
from tasks.loop.budget import budget_note
from tasks.loop.models import LoopOutcome, RoundRecord
from tasks.loop.stopping import before_round, best_round
from tasks.loop.table import decision_text
from tasks.model_files import ModelFiles, resolve_model_files
from tasks.ocr import ocr_documents
from tasks.report import (
    AnalysisReport,
    JobFigures,
    document_caveats,
    document_line,
    publish_iterations,
    publish_report,
    round_rows,
    top_gene_rows,
)
from tasks.request import AnalysisRequest, merge_obs_required
from tasks.request_checks import check_request_uris
from tasks.results import shared_result_storage
from tasks.staging import StagedInput, stage_input, validate_input


@flow(
    name="analysis-run",
    description="Stage h5ad inputs, plan with the agent, run STACK on a GPU, interpret, report.",
    persist_result=True,
    result_storage=shared_result_storage(),
    # Not on_crashed: a crashed run's GPU job keeps going, and a Retry polls it instead of starting over.
    on_cancellation=[cancel_gpu_jobs_of_flow_run],
)
def analysis_run(request: AnalysisRequest) -> AnalysisReport:
    """Answer ``request.question`` with STACK in-context generation; returns the report."""
    check_request_uris(request)  # the allowed roots hold for runs the UI or Prefect's API created too
    settings = get_settings()
    run_id = str(FlowRunContext.get().flow_run.id)
    run_prefix = join_uri(settings.storage_root, "runs", run_id)

    # The expectations' knowledge pack (~0.5 s to read), and what the first subflow's start imports,
    # are read on threads while the inputs are checked.
    pack_loading = start_loading_pack(request)
    import_in_background(SUBFLOW_START)

    # Inputs first: a bad file is reported before any OCR or GPU time is spent.
    model = resolve_model_files(request.checkpoint_uri, request.gene_list_uri)
    prompt, query = stage_inputs(request, model.gene_list_uri)
    fault_point("staged", run_id)

    documents = ocr_documents(request.documents, join_uri(run_prefix, "documents")) if request.documents else []

    # The yardstick, fixed once: every round is scored against the same expectations.
    pack_loading.join()
    expectations = set_expectations(request, documents)
    pages = [d.markdown() for d in documents]
    outcome = closed_loop(request, prompt, query, model, expectations, run_prefix, "\n\n".join(pages))

    best = outcome.best  # the run's result is its best round, not its last
    findings = interpret(best.plan, best.summary, request.question, best.evaluation, pages)
    fault_point("interpreted", run_id)
    report = AnalysisReport(
        flow_run_id=run_id,
        question=request.question,
        plan=best.plan,
        job=JobFigures.from_manifest(best.job_id, best.manifest, preemptions=best.preemptions),
        findings=findings,
        top_genes=top_gene_rows(best.summary),
        documents=[document_line(d) for d in documents],
        caveats=document_caveats(documents),
        expectations=expectations,
        grounding=best.evaluation,
        rounds=round_rows(outcome.rounds, outcome.decisions),
        best_round=best.k,
        stop_reason=outcome.stop_reason,
        stop_detail=outcome.stop_detail,
        outputs={"predictions": best.outputs["predictions"], "de": best.outputs["de"], "manifest": best.outputs["manifest"]},
    )
    return publish_report(
        report, join_uri(run_prefix, "report"), de_uri=best.outputs["de"], gene_means_uri=best.outputs.get("gene_means")
    )


def closed_loop(
    request: AnalysisRequest,
    prompt: StagedInput,
    query: StagedInput,
    model: ModelFiles,
    expectations: Expectations,
    run_prefix: str,
    document_text: str,
) -> LoopOutcome:
    """Rounds until a stopping rule holds; the ``iterations`` table on the run page grows after each."""
    limits = loop_limits(request, get_settings().loop)
    rounds: list[RoundRecord] = []
    decisions: dict[int, str] = {}
    for k in range(1, limits.max_iterations + 1):
        stop = before_round(rounds, gpu_seconds_budget=limits.gpu_seconds_budget, llm_usd_budget=limits.llm_usd_budget)
        if not stop.go_on:
            break
        note = budget_note(rounds, limits.gpu_seconds_budget, limits.llm_usd_budget)
        outcome = analysis_round(
            k, request, prompt, query, model, expectations, rounds, limits, run_prefix, document_text, note
        )
        stop = outcome.decision
        if outcome.record is None:  # the refiner stopped, or proposed a plan already tried
            break
        rounds.append(outcome.record)
        decisions[k] = decision_text(stop)
        publish_iterations(round_rows(rounds, decisions))
        if not stop.go_on:
            break
    if decisions[rounds[-1].k] != decision_text(stop):  # stopped before a round ran: the last round says why
        decisions[rounds[-1].k] = decision_text(stop)
        publish_iterations(round_rows(rounds, decisions))
    return LoopOutcome(
        rounds=rounds,
        decisions=decisions,
        best_round=best_round(rounds),
        stop_reason=stop.reason,
        stop_detail=stop.detail,
    )


def loop_limits(request: AnalysisRequest, settings: LoopSettings) -> LoopLimits:
    """The request's loop fields, else the settings' defaults."""
    return LoopLimits(
        max_iterations=request.max_iterations or settings.max_iterations,
        score_threshold=settings.score_threshold if request.score_threshold is None else request.score_threshold,
        gpu_seconds_budget=request.gpu_seconds_budget or settings.gpu_seconds_budget,
        llm_usd_budget=request.llm_usd_budget or settings.llm_usd_budget,
    )


def stage_inputs(request: AnalysisRequest, gene_list_uri: str) -> tuple[StagedInput, StagedInput]:
    """Validate, then stage, the prompt and query files; one file serving as both is handled once."""
    prompt_needs, query_needs = request.prompt_obs_required(), request.query_obs_required()
    checks = {
        "gene_list_uri": gene_list_uri,
        "counts_required": request.counts_required,
        "gene_name_column": request.gene_name_column,
    }
    if request.query_uri == request.prompt_uri:
        facts = validate_input(request.prompt_uri, required_obs=merge_obs_required(prompt_needs, query_needs), **checks)
        staged = stage_input(request.prompt_uri, facts)
        return staged, staged
    prompt_facts = validate_input(request.prompt_uri, required_obs=prompt_needs, **checks)
    query_facts = validate_input(request.query_uri, required_obs=query_needs, **checks)
    return stage_input(request.prompt_uri, prompt_facts), stage_input(request.query_uri, query_facts)
