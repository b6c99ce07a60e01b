"""End to end on loopback: deploy from prefect.yaml, trigger over HTTP, a run that fails after its
GPU job is retried through the API without redoing staging or the GPU job, cancel stops the GPU job.

Every run here fails once right after its GPU job (STACKFLOWS_FAULTS__FAIL_ONCE_AFTER, see
conftest.fault_env), the way a worker that died at that moment would leave it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from clients.batch import JobState
from clients.batch.local import LocalProcessRunner
from tests.e2e.conftest import System
from deployments.processes import wait_until

pytestmark = pytest.mark.e2e



def gpu_jobs(data_dir: Path) -> list[Path]:
    """The local batch runner's job directories: one per GPU job ever submitted."""
    jobs = data_dir / "jobs"
    return sorted(p for p in jobs.iterdir() if p.is_dir() and not p.name.startswith(".")) if jobs.is_dir() else []


def staged_objects(data_dir: Path) -> list[Path]:
    """Staged inputs in the local object store (content-addressed: a re-upload would add a file)."""
    return sorted(p for p in (data_dir / "objects").rglob("*") if p.is_file() and "inputs" in p.parts)


def task_runs(system: System, flow_run_id: str) -> list[dict]:
    """Task runs of a flow run and of all its subflows (rounds, and their STACK subflows), oldest first."""
    runs, parents = [flow_run_id], [flow_run_id]
    with system.prefect() as prefect:
        while parents:
            children = prefect.post(
                "/flow_runs/filter", json={"flow_runs": {"parent_flow_run_id": {"any_": parents}}, "limit": 200}
            ).json()
            parents = [c["id"] for c in children]
            runs += parents
        return prefect.post(
            "/task_runs/filter",
            json={"task_runs": {"flow_run_id": {"any_": runs}}, "sort": "EXPECTED_START_TIME_ASC", "limit": 200},
        ).json()


def test_deployments_are_registered_and_setting_up_again_changes_nothing(system: System) -> None:
    with system.prefect() as prefect:
        deployments = prefect.post("/deployments/filter", json={"limit": 50}).json()
    by_name = {d["name"]: d for d in deployments}
    assert {"local", "nightly-canary"} <= set(by_name)
    local = by_name["local"]
    assert local["enforce_parameter_schema"] is True
    assert local["pull_steps"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(Path(__file__).resolve().parents[2])}}
    ]
    assert local["global_concurrency_limit"]["limit"] == 2
    assert by_name["nightly-canary"]["schedules"][0]["schedule"]["cron"] == "0 3 * * *"

    output = system.setup()
    assert output.strip() and all(line.split()[0] == "unchanged" for line in output.strip().splitlines()), output


def test_post_runs_needs_the_token(system: System) -> None:
    with system.api(token=None) as anonymous:
        assert anonymous.post("/runs", json=system.request("no token")).status_code == 401


def test_a_failed_run_is_retried_through_the_api_without_redoing_its_gpu_job(system: System) -> None:
    before = set(gpu_jobs(system.data_dir))
    with system.api() as api:
        created = api.post("/runs", json=system.request("How do monocytes look among B cells?"))
        assert created.status_code == 202, created.text
        run_id = created.json()["id"]

        failed = system.wait_for_run(run_id)
        assert failed["state"]["type"] == "FAILED", failed["state"]
        assert "injected fault" in (failed["state"]["message"] or "")
        jobs_before = gpu_jobs(system.data_dir)
        staged_before = staged_objects(system.data_dir)
        assert staged_before, "the first attempt staged nothing"
        assert len(set(jobs_before) - before) == 1, "the first attempt ran exactly one GPU job"

        retried = api.post(f"/runs/{run_id}/retry")
        assert retried.status_code == 200, retried.text
        assert retried.json()["state"]["name"] == "AwaitingRetry"

        done = system.wait_for_run(run_id)
        assert done["state"]["type"] == "COMPLETED", done["state"]
        assert done["run_count"] == 2

    assert gpu_jobs(system.data_dir) == jobs_before, "the retry must poll the job it submitted, not start another"
    assert staged_objects(system.data_dir) == staged_before, "the retry uploaded its inputs again"
    states = task_states(system, run_id)
    # Prefect hands a retried parent its completed subflow's result, so the retry does not even enter
    # stack-inference; had it done so, submit-gpu-job would show Cached. Either way: submitted once.
    assert states["submit-gpu-job"] in (["Completed"], ["Completed", "Cached"]), f"submitted again: {states}"
    # Round 1 planned once (Cached on the retry); round 2 once (the offline refiner, which had no untried plan).
    assert sorted(states["plan-round"]) == ["Cached", "Completed", "Completed"], f"the agent planned twice: {states}"
    assert done["artifacts"], "the run left no report artifacts"


def test_cancelling_a_run_through_the_api_cancels_its_gpu_job(system: System) -> None:
    runner = LocalProcessRunner(system.data_dir / "jobs")
    before = set(gpu_jobs(system.data_dir))
    # Many generation steps: the job must still be running when the cancel arrives.
    body = system.request("Cancel me while my GPU job runs", num_steps=1000, split_values=["CD19+ B", "CD56+ NK"])
    with system.api() as api:
        run_id = api.post("/runs", json=body).json()["id"]
        (job_dir,) = wait_until(
            lambda: set(gpu_jobs(system.data_dir)) - before, 240, "the run's GPU job to start", watch=system.processes
        )
        cancelled = api.post(f"/runs/{run_id}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["state"]["type"] in ("CANCELLING", "CANCELLED")

    done = system.wait_for_run(run_id)
    assert done["state"]["type"] == "CANCELLED", done["state"]
    final = wait_until(
        lambda: (status := runner.status(job_dir.name)).state.is_final and status, 60, "the GPU job to end"
    )
    assert final.state == JobState.CANCELLED, final


def task_states(system: System, flow_run_id: str) -> dict[str, list[str]]:
    """Task name -> the state names of its runs, oldest first (a retry adds a run per task)."""
    states: dict[str, list[str]] = {}
    for t in task_runs(system, flow_run_id):
        states.setdefault(re.sub(r"-[0-9a-f]{3,}$", "", t["name"]), []).append(t["state"]["name"])
    return states
