"""An analysis run's time outside its GPU job, against a trivial flow on the same pool, on the local stack.

    .venv/bin/python -m benchmarks.orchestration [--max-iterations 1 --keep --timeline --postgres]

One local stack (deployments/local_stack.py: Prefect server on SQLite, the deployments, a process
worker, the API) runs, in this order: the trivial flow (a flow with one task, deployed here to the
same ``stackflows-local`` pool), an analysis run through ``POST /runs`` on the small inputs
(tests/small_inputs.py: 120 pbmc68k cells, a tiny untrained checkpoint, a CPU job, an explicit plan
so no agent key is needed), and the trivial flow again. Per run, from Prefect's API and the job's
files, all on this machine's clock:

* to Running: from the POST (``POST /runs``; the trivial flow's ``create_flow_run``) to the flow
  run's ``start_time`` (the worker started its process and the flow began);
* to first task: from the POST to the earliest task run's start in the run or its subflows;
* total: from the POST to the flow run's ``end_time``;
* GPU job: the job process's wall (the local runner's ``pid`` file to its ``exit_code`` file:
  Python start-up, imports and the job's own ``timings_s.total_s``), summed over the run's jobs;
* outside the job = total - GPU job; overhead ratio = outside the job / the trivial flow's total.

Target (issue 15): outside the job <= the trivial flow's total + 3 s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import flow, task

if TYPE_CHECKING:
    import httpx

    from deployments.local_stack import LocalStack

TOKEN = "bench-orchestration-token-5d1b"
TARGET_MARGIN_S = 3.0
RUN_TIMEOUT_S = 900
TRIVIAL_FLOW = "orchestration-trivial"
TRIVIAL_ENTRYPOINT = "benchmarks/orchestration.py:trivial_flow"


@task
def trivial_task() -> int:
    return 1


@flow(name=TRIVIAL_FLOW)
def trivial_flow() -> int:
    """The baseline: what any flow on this pool costs (a process started, the flow loaded, one task)."""
    return trivial_task()


@dataclass
class Timed:
    label: str
    state: str
    to_running: float | None
    to_first_task: float | None
    total: float | None
    gpu_job: float | None = None
    job_total: float | None = None
    jobs: int = 0

    @property
    def outside_job(self) -> float | None:
        return None if self.total is None else self.total - (self.gpu_job or 0.0)


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _since(posted: datetime, value: str | None) -> float | None:
    moment = _time(value)
    return None if moment is None else (moment - posted).total_seconds()


def run_tree(prefect: httpx.Client, root_id: str) -> list[dict]:
    """The run and every subflow run below it."""
    runs, frontier = [], [root_id]
    while frontier:
        found = prefect.post(
            "/flow_runs/filter", json={"flow_runs": {"parent_flow_run_id": {"any_": frontier}}, "limit": 200}
        ).json()
        runs += found
        frontier = [r["id"] for r in found]
    return [prefect.get(f"/flow_runs/{root_id}").json(), *runs]


def first_task_start(prefect: httpx.Client, flow_run_ids: list[str]) -> str | None:
    tasks = prefect.post(
        "/task_runs/filter",
        json={"task_runs": {"flow_run_id": {"any_": flow_run_ids}}, "sort": "EXPECTED_START_TIME_ASC", "limit": 200},
    ).json()
    starts = sorted(t["start_time"] for t in tasks if t.get("start_time"))
    return starts[0] if starts else None


def job_processes(data_dir: Path, run_id: str) -> list[tuple[float, float | None]]:
    """(process wall, the job's own total_s) of every local job whose outputs are under this run."""
    from clients.storage import local_path_of

    jobs = data_dir / "jobs"
    found = []
    for job_dir in sorted(jobs.iterdir()) if jobs.is_dir() else []:
        request, exit_file = job_dir / "request.json", job_dir / "exit_code"
        if not request.is_file() or not exit_file.is_file():
            continue
        prefix = json.loads(request.read_text()).get("output_prefix", "").rstrip("/")
        if f"/runs/{run_id}/" not in prefix + "/":
            continue
        wall = exit_file.stat().st_mtime - (job_dir / "pid").stat().st_mtime
        manifest = local_path_of(f"{prefix}/manifest.json")
        total = json.loads(manifest.read_text())["timings_s"].get("total_s") if manifest.is_file() else None
        found.append((wall, total))
    return found


def timeline(stack: LocalStack, run_id: str, posted: datetime) -> list[tuple[float, str]]:
    """Every flow run's and task run's start and end in the run's tree, and every log line, timed from the POST."""
    events: list[tuple[float, str]] = []
    with stack.prefect() as prefect:
        tree = run_tree(prefect, run_id)
        ids = [r["id"] for r in tree]
        names = {r["id"]: r["name"] for r in tree}
        tasks = prefect.post("/task_runs/filter", json={"task_runs": {"flow_run_id": {"any_": ids}}, "limit": 200}).json()
        logs = prefect.post(
            "/logs/filter", json={"logs": {"flow_run_id": {"any_": ids}}, "sort": "TIMESTAMP_ASC", "limit": 200}
        ).json()
    for run in tree:
        for edge in ("start", "end"):
            at = _since(posted, run[f"{edge}_time"])
            if at is not None:
                events.append((at, f"[flow {edge}] {run['name']}"))
    for t in tasks:
        for edge in ("start", "end"):
            at = _since(posted, t[f"{edge}_time"])
            if at is not None:
                events.append((at, f"[task {edge}] {t['name']} in {names.get(t['flow_run_id'], '?')}"))
    for line in logs:
        events.append((_since(posted, line["timestamp"]) or 0.0, f"  log: {line['message'][:120]}"))
    return sorted(events, key=lambda e: e[0])


def print_timeline(events: list[tuple[float, str]]) -> None:
    """The timeline with the gap to the previous event: where the seconds between steps go."""
    previous = 0.0
    for at, what in events:
        print(f"{at:8.2f} (+{at - previous:5.2f}) {what}")
        previous = at


def timed(stack: LocalStack, label: str, run_id: str, posted: datetime) -> Timed:
    with stack.prefect() as prefect:
        tree = run_tree(prefect, run_id)
        root = tree[0]
        first = first_task_start(prefect, [r["id"] for r in tree])
    jobs = job_processes(stack.data_dir, run_id)
    totals = [t for _, t in jobs if t is not None]
    return Timed(
        label=label,
        state=root["state_type"],
        to_running=_since(posted, root["start_time"]),
        to_first_task=_since(posted, first),
        total=_since(posted, root["end_time"]),
        gpu_job=sum(w for w, _ in jobs) if jobs else None,
        job_total=sum(totals) if totals else None,
        jobs=len(jobs),
    )


def deploy_trivial(stack: LocalStack) -> str:
    """The trivial flow as a deployment on the local pool, run from this checkout like the analysis."""
    from deployments.local_stack import LOCAL_POOL, PROJECT_DIR

    with stack.prefect() as prefect:
        flow_id = prefect.post("/flows/", json={"name": TRIVIAL_FLOW}).json()["id"]
        deployment = prefect.post(
            "/deployments/",
            json={
                "name": "bench",
                "flow_id": flow_id,
                "entrypoint": TRIVIAL_ENTRYPOINT,
                "work_pool_name": LOCAL_POOL,
                "work_queue_name": "default",
                "pull_steps": [{"prefect.deployments.steps.set_working_directory": {"directory": str(PROJECT_DIR)}}],
                "parameter_openapi_schema": {"type": "object", "properties": {}},
            },
        )
        deployment.raise_for_status()
        return deployment.json()["id"]


def run_trivial(stack: LocalStack, deployment_id: str, label: str) -> Timed:
    from deployments.processes import wait_until

    posted = datetime.now(UTC)
    with stack.prefect() as prefect:
        created = prefect.post(f"/deployments/{deployment_id}/create_flow_run", json={})
        created.raise_for_status()
        run_id = created.json()["id"]

        def ended() -> bool:
            return prefect.get(f"/flow_runs/{run_id}").json()["state_type"] in {"COMPLETED", "FAILED", "CRASHED"}

        wait_until(ended, RUN_TIMEOUT_S, f"trivial flow run {run_id} to end", watch=stack.processes)
    return timed(stack, label, run_id, posted)


def run_analysis(stack: LocalStack, body: dict, show_timeline: bool = False) -> Timed:
    posted = datetime.now(UTC)
    with stack.api() as api:
        answer = api.post("/runs", json=body)
        answer.raise_for_status()
        run_id = answer.json()["id"]
    stack.wait_for_run(run_id, timeout=RUN_TIMEOUT_S)
    if show_timeline:
        print("\nanalysis run, timed from the POST (s):")
        print_timeline(timeline(stack, run_id, posted))
    return timed(stack, "analysis run", run_id, posted)


def report(runs: list[Timed]) -> bool:
    fmt = lambda x: "-" if x is None else f"{x:.2f}"
    print(
        f"\n{'run':<16} {'state':<10} {'to Running':>10} {'to 1st task':>11} {'total':>7} {'GPU job':>7}"
        f" {'(job total)':>11} {'outside job':>11}"
    )
    for r in runs:
        print(
            f"{r.label:<16} {r.state:<10} {fmt(r.to_running):>10} {fmt(r.to_first_task):>11} {fmt(r.total):>7}"
            f" {fmt(r.gpu_job):>7} {fmt(r.job_total):>11} {fmt(r.outside_job):>11}"
        )
    analysis = next(r for r in runs if r.label == "analysis run")
    trivial = [r.total for r in runs if r.label.startswith("trivial") and r.total is not None]
    if not trivial or analysis.outside_job is None:
        print("a run did not finish: nothing to compare")
        return False
    baseline = sum(trivial) / len(trivial)
    outside = analysis.outside_job
    met = outside <= baseline + TARGET_MARGIN_S
    print(
        f"\nanalysis run outside its GPU job ({analysis.jobs} job(s)): {outside:.2f} s; trivial flow (mean of "
        f"{len(trivial)}): {baseline:.2f} s; overhead ratio {outside / baseline:.2f}; target <= trivial + "
        f"{TARGET_MARGIN_S:.0f} s = {baseline + TARGET_MARGIN_S:.2f} s: {'met' if met else 'NOT met'} "
        f"({outside - baseline:+.2f} s over the trivial flow)"
    )
    print(f"machine load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    return met


def main() -> int:
    from deployments.local_stack import running_local_stack
    from tests.postgres_server import running_postgres
    from tests.small_inputs import make_inputs

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-iterations", type=int, default=1, help="rounds of the closed loop (1: one pass)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, outputs)")
    parser.add_argument(
        "--timeline", action="store_true", help="print the analysis run's flow runs, task runs and logs timed from the POST"
    )
    parser.add_argument(
        "--postgres", action="store_true",
        help="the Prefect server on PostgreSQL (production's database; Debian's postgresql package) instead of SQLite",
    )
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="stackflows-bench-orchestration-"))
    try:
        t0 = time.perf_counter()
        inputs = make_inputs(home / "data")
        with contextlib.ExitStack() as running:
            database_url = running.enter_context(running_postgres()) if args.postgres else None
            stack = running.enter_context(running_local_stack(home, home / "data", TOKEN, database_url=database_url))
            database = "PostgreSQL" if args.postgres else "SQLite"
            print(f"inputs and local stack (Prefect server on {database}) up in {time.perf_counter() - t0:.0f} s "
                  f"(load {os.getloadavg()[0]:.1f})")
            deployment_id = deploy_trivial(stack)
            body = inputs.request_body("How do monocytes look among B cells?", max_iterations=args.max_iterations)
            runs = [
                run_trivial(stack, deployment_id, "trivial (1st)"),
                run_analysis(stack, body, args.timeline),
                run_trivial(stack, deployment_id, "trivial (2nd)"),
            ]
            report(runs)
            return 0 if all(r.state == "COMPLETED" for r in runs) else 1
    finally:
        if args.keep:
            print(f"kept: {home} (logs/, data/)")
        else:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
