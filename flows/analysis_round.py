"""One round of the closed loop: plan, run STACK, score, decide.

Called by the analysis run once per round, as a subflow the run page shows as ``round-<k>`` (renamed
``round-<k> (score s)`` once scored). Read it as the round:

1. plan the round: round 1 as the run's plan, later rounds refined from the earlier rounds' scores
   (Claude, or the offline refiner); a plan already tried, or a refiner that stops, ends the loop;
2. run STACK on a GPU (outputs under ``runs/<run>/iter-<k>/``); a plan whose job an earlier round
   ran finds that job instead of submitting another;
3. score the predictions against the run's fixed expectations, by code;
4. decide: stop (threshold, plateau, not assessable, most rounds) or go on.

Every step's result is persisted, so a Retry of the run replays a finished round from storage: no
second GPU job, no second model call.
"""

# No `from __future__ import annotations` here: Prefect validates a flow's parameters against its
# annotations, and a flow loaded by a worker cannot resolve them as strings.
import threading
from functools import partial

from prefect import flow, get_client, get_run_logger
from prefect.concurrency.sync import concurrency
from prefect.context import FlowRunContext
from pydantic import BaseModel

from clients.batch.settings import GPU_CONCURRENCY_LIMIT
from clients.settings import get_settings
from clients.storage import join_uri
from flows.faults import fault_point, round_step
from flows.stack_inference import cancel_gpu_jobs_of_flow_run, stack_inference
from inference.contract import DE_FILE, GENE_MEANS_FILE, PREDICTIONS_FILE, SUMMARY_FILE
from tasks.agent.steps import plan_round
from tasks.gpu_job import gpus_at_once, job_submitted, shard_count_for
from tasks.grounding.enrichment import start_importing_decoupler
from tasks.grounding.expectations import query_type_of
from tasks.grounding.models import Expectations
from tasks.grounding.steps import evaluate_grounding, grounding_pack
from tasks.loop.models import LoopDecision, RefinedPlan, RoundRecord
from tasks.loop.stopping import after_round, on_refined
from tasks.model_files import ModelFiles
from tasks.report.model import JobFigures
from tasks.request import AnalysisRequest
from tasks.results import shared_result_storage
from tasks.run_tree import root_flow_run_id
from tasks.staging import StagedInput

GPU_SLOT_LEASE_S = 60


class RoundOutcome(BaseModel):
    """What a round hands back: its plan (or why there is none), its record once run, and the decision."""

    refined: RefinedPlan
    record: RoundRecord | None = None
    decision: LoopDecision


class LoopLimits(BaseModel):
    """The request's loop fields with the settings' defaults filled in."""

    max_iterations: int
    score_threshold: float
    gpu_seconds_budget: float | None = None
    llm_usd_budget: float | None = None


@flow(
    name="analysis-round",
    flow_run_name="round-{k}",
    persist_result=True,
    result_storage=shared_result_storage(),
    on_cancellation=[cancel_gpu_jobs_of_flow_run],
)
def analysis_round(
    k: int,
    request: AnalysisRequest,
    prompt: StagedInput,
    query: StagedInput,
    model: ModelFiles,
    expectations: Expectations,
    history: list[RoundRecord],
    limits: LoopLimits,
    run_prefix: str,
    document_text: str = "",
    budget_note: str = "",
) -> RoundOutcome:
    """Round ``k`` after the rounds in ``history``: plan it, run it, score it, decide what comes next."""
    run_id = root_flow_run_id(FlowRunContext.get().flow_run)
    refined = plan_round(request, prompt, query, document_text, history, budget_note)
    fault_point(round_step("planned", k), run_id)
    decision = on_refined(refined, history)
    if not decision.go_on:
        return RoundOutcome(refined=refined, decision=decision)
    plan = refined.plan
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
        output_prefix=join_uri(run_prefix, f"iter-{k}", "stack"),
        shard_count=shard_count_for(query.facts.n_obs),
    )
    # The grounding's slowest imports, on a thread while the job runs (from its submission on).
    submitted = threading.Event()
    importing = start_importing_decoupler(after=submitted, pack=partial(grounding_pack, request.gene_set_uris))
    watching = job_submitted.set(submitted)
    # GPU jobs queue here instead of piling up. The slot's lease is renewed while this process lives;
    # the shortest lease (60 s) frees the slot of a crashed run soon, instead of after Prefect's 5 min.
    try:
        with concurrency(GPU_CONCURRENCY_LIMIT, occupy=gpus_at_once(spec), lease_duration=GPU_SLOT_LEASE_S):
            collected = stack_inference(spec, round_number=k)
    finally:
        job_submitted.reset(watching)
        submitted.set()  # the thread never waits past the job
    importing.join()
    fault_point(round_step("stack_inference", k), run_id)

    summary = collected.read_summary()
    evaluation = evaluate_grounding(expectations, summary, collected.outputs[DE_FILE], request.gene_set_uris)
    fault_point(round_step("evaluated", k), run_id)
    manifest = collected.manifest
    figures = JobFigures.from_manifest(collected.job_id, manifest)  # a sharded job's: its shards' figures
    record = RoundRecord(
        k=k,
        plan=plan,
        job_id=collected.job_id,
        reused_job_of=_round_of(collected.output_prefix, k),
        output_prefix=join_uri(run_prefix, f"iter-{k}"),
        outputs={
            "predictions": collected.outputs[PREDICTIONS_FILE],
            "de": collected.outputs[DE_FILE],
            "summary": collected.outputs[SUMMARY_FILE],
            "manifest": collected.manifest_uri,
            # the report's plot reads the job's per-gene means (a job without them: no plot)
            **({"gene_means": collected.outputs[GENE_MEANS_FILE]} if GENE_MEANS_FILE in collected.outputs else {}),
        },
        gpu_seconds=figures.gpu_seconds,
        wall_seconds=figures.wall_seconds,
        llm_usd=refined.usage.estimated_cost_usd if refined.usage else 0.0,
        summary=summary,
        evaluation=evaluation,
        manifest=manifest,
        preemptions=collected.preemptions,
    )
    _name_round(k, record.composite)
    decision = after_round(
        [*history, record],
        max_iterations=limits.max_iterations,
        threshold=limits.score_threshold,
        settings=get_settings().loop,
    )
    return RoundOutcome(refined=refined, record=record, decision=decision)


def _round_of(output_prefix: str, k: int) -> int | None:
    """The earlier round whose job this is, when the job's outputs live under another round's prefix."""
    for part in output_prefix.rstrip("/").split("/"):
        if part.startswith("iter-") and part[5:].isdigit() and int(part[5:]) != k:
            return int(part[5:])
    return None


def _name_round(k: int, composite: int | None) -> None:
    """The run page lists rounds by name: once scored, the name says the score."""
    score = "not scored" if composite is None else f"score {composite}"
    run = FlowRunContext.get().flow_run
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(run.id, name=f"round-{k} ({score})")
    except Exception as exc:  # a name is for the eye; a failed rename must not fail the round
        get_run_logger().warning("Could not rename round %d's run (%s)", k, exc)
