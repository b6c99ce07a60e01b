"""Retry soak: 20 analysis runs of two rounds each on the local stack, each failed or crashed once at
a step of its own and retried through the API. Every run must complete with exactly one GPU job per
distinct plan (two) and with every round's outputs intact; the line it prints is the claim:
``runs=20 gpu_submissions=40 distinct_plans=40 lost_outputs=0``.

Faults (flows/faults.py): each run meets one fault, after staging, planning, submitting its GPU job
(a crash inside the STACK subflow), the subflow, or interpreting, in round 1, or after round 2's
plan, submission or evaluation; half of them kill the flow-run process (as a dead worker or
container would), the others fail the run.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from clients.storage import local_path_of, store_for
from deployments.local_stack import LocalStack, running_local_stack
from tasks.gpu_job import OutputsInvalidError, verify_outputs
from tasks.report import AnalysisReport
from tests.e2e.test_e2e_runs import gpu_jobs
from tests.small_inputs import Inputs, make_inputs

pytestmark = pytest.mark.e2e

RUNS = 20
STEPS = ["staged", "planned", "submitted", "stack_inference", "interpreted", "planned@2", "submitted@2", "evaluated@2"]
ROUNDS = 2  # round 2: the offline refiner's more steps (2 -> 4): two distinct plans per run
SOAK_TIMEOUT_S = 1800
TOKEN = "soak-token-7f2a"
IN_FLIGHT = 2  # the deployment runs 2 at a time; more would wait ~20 s per turn for a concurrency slot
# One retry per injected fault, plus the odd one for Prefect 3.8's late crash report: the worker
# reports a crashed process a second time some seconds later, and if the run was retried in between,
# that report marks the new attempt Crashed too (docs/deploy.md, "Known pitfalls").
MAX_RETRIES = 6


@pytest.fixture(scope="module")
def soak(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, Inputs]]:
    root = tmp_path_factory.mktemp("soak")
    faults = {
        "STACKFLOWS_FAULTS__FAIL_ONCE_AFTER": json.dumps(STEPS),
        "STACKFLOWS_FAULTS__ONE_STEP_PER_RUN": "true",
        "STACKFLOWS_FAULTS__CRASH": "half",
        "STACKFLOWS_AGENT__DEFAULT_NUM_STEPS": "2",  # round 1's steps when the request names none
    }
    inputs = make_inputs(root / "data")
    with running_local_stack(root, root / "data", TOKEN, extra_env=faults) as stack:
        yield stack, inputs


def drive_to_completion(stack: LocalStack, bodies: list[dict]) -> tuple[dict[str, dict], Counter]:
    """Trigger the runs, at most ``IN_FLIGHT`` at a time, and retry every run that fails or crashes
    (as a user would from the dashboard) until all complete. Returns the final views and retries."""
    queue, active = list(bodies), set()
    finished: dict[str, dict] = {}
    retries: Counter = Counter()
    deadline = time.monotonic() + SOAK_TIMEOUT_S
    with stack.api() as api:
        while queue or active:
            assert time.monotonic() < deadline, f"soak timed out; finished {len(finished)} of {len(bodies)}"
            for process in stack.processes:
                assert process.popen.poll() is None, f"{process.name} exited:\n{process.tail()}"
            while queue and len(active) < IN_FLIGHT:
                active.add(api.post("/runs", json=queue.pop(0)).json()["id"])
            for run_id in sorted(active):
                run = api.get(f"/runs/{run_id}").json()
                state = (run["state"] or {}).get("type")
                if state in ("FAILED", "CRASHED"):
                    assert retries[run_id] < MAX_RETRIES, f"run {run_id} keeps failing: {run['state']}"
                    retried = api.post(f"/runs/{run_id}/retry")
                    assert retried.status_code == 200, retried.text
                    retries[run_id] += 1
                elif state == "CANCELLED":
                    pytest.fail(f"run {run_id} was cancelled: {run['state']}")
                elif state == "COMPLETED":
                    finished[run_id] = run
                    active.discard(run_id)
            time.sleep(1)
    return finished, retries


def lost_outputs(run_ids: list[str], data_dir: Path) -> list[str]:
    """Outputs a completed run should have and does not, or that do not match their manifest."""
    lost, reference = [], None
    for run_id in run_ids:
        report_json = next((data_dir / "objects" / "runs" / run_id).rglob("report.json"), None)
        if report_json is None:
            lost.append(f"{run_id}: no report.json")
            continue
        report = AnalysisReport.model_validate_json(report_json.read_text())
        lost += [f"{run_id}: {name} missing" for name, uri in report.outputs.items() if not store_for(uri).exists(uri)]
        if len(report.rounds) != ROUNDS:
            lost.append(f"{run_id}: {len(report.rounds)} rounds in the report, not {ROUNDS}")
        for row in report.rounds:  # every round's outputs, as its manifest vouches for them
            try:
                verify_outputs(row.job_id, (data_dir / "objects" / "runs" / run_id / f"iter-{row.k}" / "stack").as_uri())
            except OutputsInvalidError as e:
                lost.append(f"{run_id} round {row.k}: {e}")
        try:
            verify_outputs(report.job.job_id, report.outputs["predictions"].rsplit("/", 1)[0])
        except OutputsInvalidError as e:
            lost.append(f"{run_id}: {e}")
            continue
        x = ad.read_h5ad(local_path_of(report.outputs["predictions"])).X
        x = x.toarray() if hasattr(x, "toarray") else x
        if reference is None:
            reference = x
        elif not np.array_equal(x, reference):
            lost.append(f"{run_id}: predictions differ from the other runs' (same inputs, same seed)")
    return lost


def test_twenty_two_round_runs_each_faulted_once_and_retried_submit_one_job_per_plan_and_lose_nothing(
    soak: tuple[LocalStack, Inputs], capsys: pytest.CaptureFixture
) -> None:
    stack, inputs = soak
    finished, retries = drive_to_completion(stack, [
        # distinct questions: distinct runs with identical GPU jobs
        inputs.request_body(f"Soak run {i}: how do monocytes look among B cells?", num_steps=None, max_iterations=ROUNDS)
        for i in range(RUNS)
    ])
    run_ids = list(finished)
    assert len(run_ids) == RUNS
    submissions = len(gpu_jobs(stack.data_dir))
    lost = lost_outputs(run_ids, stack.data_dir)
    faults = Counter(p.name.split("-", 5)[-1] for p in (stack.data_dir / "faults").iterdir())

    with capsys.disabled():
        print(f"\nruns={len(finished)} gpu_submissions={submissions} distinct_plans={ROUNDS * RUNS} lost_outputs={len(lost)}")
        print(f"faults met, by step: {dict(sorted(faults.items()))}; retries: {sum(retries.values())}")
    assert lost == []
    assert submissions == ROUNDS * RUNS  # one job per distinct plan
    assert all(retries[r] >= 1 for r in run_ids), f"every run should have met its fault: {retries}"
    assert len(faults) >= 4, f"the soak should meet faults at most steps, met {faults}"
