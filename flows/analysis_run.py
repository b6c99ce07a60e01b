"""The analysis run: a question and two h5ad files in, a report on what STACK predicts out.

Read it as the run itself:

1. check the model files and the inputs, then stage the inputs, before anything costly;
2. read the request's documents (OCR), for the agent;
3. fix the expectations: what the question predicts (genes, gene sets, the query's cell type), the
   yardstick the prediction is scored against; an unknown gene set or a bad GMT fails here;
4. the agent plans which cells and contexts answer the question, and the control to compare with;
5. STACK runs on a GPU (a subflow: submitted once, progress on the run page); the job also computes
   the DE of every treated context against its reference, the query type's markers and the backtest;
6. the grounding is scored by code (never by the model), the agent interprets the predictions and
   the scores, and the report is written beside the outputs.

Every task result is persisted to storage every worker can read, so a Retry from the dashboard (or
``POST /runs/{id}/retry``) skips what is done: inputs are not uploaded again, the agent is not paid
twice, the GPU job is polled, not submitted again. Cancelling the run cancels its GPU job.
"""

# No `from __future__ import annotations` here: Prefect validates the flow's parameters against its
# annotations, and a flow loaded from its entrypoint (by a worker) cannot resolve them as strings.
from prefect import flow
from prefect.concurrency.sync import concurrency
from prefect.context import FlowRunContext

from clients.batch.settings import GPU_CONCURRENCY_LIMIT
from clients.settings import get_settings
from clients.storage import join_uri
from flows.faults import fault_point
from flows.stack_inference import cancel_gpu_jobs_of_flow_run, stack_inference
from inference.contract import DE_FILE, PREDICTIONS_FILE
from tasks.agent.steps import interpret, plan_run, set_expectations
from tasks.grounding.expectations import query_type_of
from tasks.grounding.steps import evaluate_grounding
from tasks.model_files import resolve_model_files
from tasks.ocr import ocr_documents
from tasks.report import AnalysisReport, JobFigures, document_caveats, document_line, publish_report, top_gene_rows
from tasks.request import AnalysisRequest, merge_obs_required
from tasks.request_checks import check_request_uris
from tasks.results import shared_result_storage
from tasks.staging import StagedInput, stage_input, validate_input

GPU_SLOT_LEASE_S = 60


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

    # Inputs first: a bad file is reported before any OCR or GPU time is spent.
    model = resolve_model_files(request.checkpoint_uri, request.gene_list_uri)
    prompt, query = stage_inputs(request, model.gene_list_uri)
    fault_point("staged", run_id)

    documents = ocr_documents(request.documents, join_uri(run_prefix, "documents")) if request.documents else []

    expectations = set_expectations(request, documents)
    plan = plan_run(request, prompt, query, "\n\n".join(d.markdown() for d in documents))
    fault_point("planned", run_id)
    # The query's cell type: the request's, else the single value the query cells are filtered on.
    cell_type = query_type_of(request.model_copy(update={"query_obs_filter": plan.query_obs_filter}))
    spec = plan.to_job_spec(
        prompt_uri=prompt.uri,
        query_uri=query.uri,
        # the matrices validation found the counts in: the job reads exactly these
        prompt_matrix=prompt.facts.matrix_used,
        query_matrix=query.facts.matrix_used,
        counts_required=request.counts_required,
        gene_name_column=request.gene_name_column,
        checkpoint_uri=model.checkpoint_uri,
        gene_list_uri=model.gene_list_uri,
        cell_type_column=cell_type[0] if cell_type else None,
        query_cell_type=cell_type[1] if cell_type else None,
        backtest=request.backtest,
        output_prefix=join_uri(run_prefix, "stack"),
    )
    # GPU jobs queue here instead of piling up. The slot's lease is renewed while this process lives;
    # the shortest lease (60 s) frees the slot of a crashed run soon, instead of after Prefect's 5 min.
    with concurrency(GPU_CONCURRENCY_LIMIT, occupy=1, lease_duration=GPU_SLOT_LEASE_S):
        collected = stack_inference(spec)
    fault_point("stack_inference", run_id)

    summary = collected.read_summary()
    de_uri = collected.outputs[DE_FILE]
    grounding = evaluate_grounding(expectations, summary, de_uri, request.gene_set_uris)
    findings = interpret(plan, summary, request.question, grounding, [d.markdown() for d in documents])
    fault_point("interpreted", run_id)
    report = AnalysisReport(
        flow_run_id=run_id,
        question=request.question,
        plan=plan,
        job=JobFigures.from_manifest(collected.job_id, collected.manifest),
        findings=findings,
        top_genes=top_gene_rows(summary),
        documents=[document_line(d) for d in documents],
        caveats=document_caveats(documents),
        expectations=expectations,
        grounding=grounding,
        outputs={
            "predictions": collected.outputs[PREDICTIONS_FILE],
            "de": de_uri,
            "manifest": collected.manifest_uri,
        },
    )
    return publish_report(
        report, query.uri, report.outputs["predictions"], join_uri(run_prefix, "report"), de_uri=de_uri
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
