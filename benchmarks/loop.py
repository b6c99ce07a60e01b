"""The closed loop's own cost per round, beside the GPU job's time, on the local stack.

    .venv/bin/python -m benchmarks.loop [--max-iterations 3 --keep]

One analysis run through ``POST /runs`` on the small inputs (tests/small_inputs.py: 120 pbmc68k
cells, a tiny untrained checkpoint) with ``num_steps`` left to the agent, so the offline refiner
varies the steps from round to round, and a few expected genes, so grounding scores the rounds and
the loop is not stopped as not assessable after two (``--no-expectations`` sends none). The whole stack runs here (deployments/local_stack.py: Prefect
server on SQLite, the deployments, a process worker, the API); the GPU job is a local process.

Per round, from Prefect's API (flow runs filtered by ``parent_flow_run_id``) and the job's files:

* round wall: the ``analysis-round`` subflow's start to end (plan, GPU job, grounding, decision);
* stack wall: its ``stack-inference`` subflow's start to end (submit, poll, verify, collect);
* job total: the job's own ``timings_s.total_s`` (manifest.json under ``runs/<run>/iter-<k>/stack/``);
* job process: the job's process from the local runner's ``pid`` file to its ``exit_code`` file
  (adds Python start-up and imports to job total);
* loop cost = round wall - job process: what a round costs besides the GPU job's own time (the
  target). The job process's start-up and imports are the job's, not the loop's: a Batch job bills
  its whole container, and the flow waits on it either way;
* loop cost incl. job start = round wall - job total: the earlier figure, kept beside it; of it,
  waiting = stack wall - job total: submitting, the job process starting, polling past the end;
* after job = stack wall - job process: submitting, noticing the job's end and collecting;
* between: the parent run's time from the previous round's end to this round's start (the
  iterations table, the budget check), not inside any round.

Target: loop cost (round wall - job process) <= 3 s per round.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from deployments.local_stack import LocalStack, running_local_stack
from tests.small_inputs import make_inputs

TOKEN = "bench-loop-token-3c9e"
TARGET_S = 3.0
RUN_TIMEOUT_S = 1800  # three CPU jobs on a loaded 2-core machine
# The poll settings keep their defaults (1 s backing off to 30 s): the local runner's wait returns
# when the job's process ends, so no interval is sat out after it.
SETTINGS = {
    "STACKFLOWS_AGENT__DEFAULT_NUM_STEPS": "2",  # the offline planner's round 1; the refiner varies it
}

# Genes the small inputs carry, so grounding can score rounds offline and the loop runs its rounds
# (without any, two unscored rounds stop it as not assessable).
EXPECTED = {
    "expected_up": ["S100A8", "S100A9", "LYZ"],
    "expected_down": ["MS4A1", "CD74"],
}


@dataclass
class Round:
    k: int
    name: str
    steps: int | None
    round_wall: float
    stack_wall: float | None
    job_total: float | None
    job_process: float | None
    between: float | None  # the parent's time since the previous round ended

    @property
    def loop_cost(self) -> float | None:
        """Round wall - job process: the round besides the GPU job's own time (the target)."""
        return None if self.job_process is None else self.round_wall - self.job_process

    @property
    def loop_cost_incl_start(self) -> float | None:
        """Round wall - job total (timed inside the job after its imports): the earlier figure."""
        return None if self.job_total is None else self.round_wall - self.job_total

    @property
    def after_job(self) -> float | None:
        """Stack wall - job process: submitting, seeing the job end and collecting its outputs."""
        return None if self.job_process is None or self.stack_wall is None else self.stack_wall - self.job_process

    @property
    def waiting(self) -> float | None:
        return (
            None
            if self.job_total is None or self.stack_wall is None
            else self.stack_wall - self.job_total
        )


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _wall(flow_run: dict) -> float:
    return (_time(flow_run["end_time"]) - _time(flow_run["start_time"])).total_seconds()


def children(stack: LocalStack, parent_ids: list[str]) -> list[dict]:
    """Flow runs whose parent is one of ``parent_ids``, with their flow's name, oldest first."""
    with stack.prefect() as prefect:
        runs = prefect.post(
            "/flow_runs/filter",
            json={
                "flow_runs": {"parent_flow_run_id": {"any_": parent_ids}},
                "sort": "START_TIME_ASC",
                "limit": 200,
            },
        )
        runs.raise_for_status()
        runs = runs.json()
        flow_ids = sorted({r["flow_id"] for r in runs})
        flows = (
            prefect.post(
                "/flows/filter", json={"flows": {"id": {"any_": flow_ids}}}
            ).json()
            if flow_ids
            else []
        )
    names = {f["id"]: f["name"] for f in flows}
    return [{**r, "flow_name": names.get(r["flow_id"])} for r in runs]


def job_process_seconds(data_dir: Path, run_id: str, k: int) -> float | None:
    """The job process's wall time from the local runner's files (pid written at start, exit_code at end)."""
    jobs = data_dir / "jobs"
    for job_dir in sorted(jobs.iterdir()) if jobs.is_dir() else []:
        request = job_dir / "request.json"
        if not request.is_file() or not (job_dir / "exit_code").is_file():
            continue
        prefix = (
            json.loads(request.read_text()).get("output_prefix", "").rstrip("/") + "/"
        )
        if f"/runs/{run_id}/iter-{k}/" in prefix:
            return (job_dir / "exit_code").stat().st_mtime - (
                job_dir / "pid"
            ).stat().st_mtime
    return None


def measure(stack: LocalStack, run_id: str, logs: bool = False) -> list[Round]:
    run_dir = stack.data_dir / "objects" / "runs" / run_id
    rounds = [
        r for r in children(stack, [run_id]) if r["flow_name"] == "analysis-round"
    ]
    stacks = {}
    for s in children(stack, [r["id"] for r in rounds]) if rounds else []:
        if s["flow_name"] == "stack-inference":
            stacks[s["parameters"].get("round_number", 1)] = s
    task_breakdown(stack, rounds, logs)
    measured, previous_end = [], None
    for r in sorted(rounds, key=lambda r: r["parameters"]["k"]):
        k = r["parameters"]["k"]
        manifest_path = next(run_dir.rglob(f"iter-{k}/stack/manifest.json"), None)
        manifest = json.loads(manifest_path.read_text()) if manifest_path else None
        start = _time(r["start_time"])
        measured.append(
            Round(
                k=k,
                name=r["name"],
                steps=manifest["spec"].get("num_steps") if manifest else None,
                round_wall=_wall(r),
                stack_wall=_wall(stacks[k]) if k in stacks else None,
                job_total=manifest["timings_s"]["total_s"] if manifest else None,
                job_process=job_process_seconds(stack.data_dir, run_id, k),
                between=(start - previous_end).total_seconds()
                if previous_end
                else None,
            )
        )
        previous_end = _time(r["end_time"])
    return measured


def task_breakdown(stack: LocalStack, rounds: list[dict], logs: bool = False) -> None:
    """Where a round's own time goes: its task runs (not its stack subflow's), longest first."""
    with stack.prefect() as prefect:
        tasks = prefect.post(
            "/task_runs/filter",
            json={"flow_runs": {"id": {"any_": [r["id"] for r in rounds]}}, "limit": 200},
        ).json()
    by_round: dict[str, list[tuple[float, str]]] = {}
    for t in tasks:
        if t.get("start_time") and t.get("end_time") and t.get("flow_run_id"):
            by_round.setdefault(t["flow_run_id"], []).append((_wall(t), t["name"]))
    for r in sorted(rounds, key=lambda r: r["parameters"]["k"]):
        spent = sorted(by_round.get(r["id"], []), reverse=True)
        listed = ", ".join(f"{name} {seconds:.2f}" for seconds, name in spent[:6])
        print(f"  round {r['parameters']['k']} task runs (s): {listed or '-'}; all {sum(s for s, _ in spent):.2f}")
        if logs:  # the round's and its subflows' log lines, timed from the round's start
            with stack.prefect() as prefect:
                subs = [c["id"] for c in children(stack, [r["id"]])]
                logs = prefect.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [r["id"], *subs]}}, "sort": "TIMESTAMP_ASC", "limit": 200}).json()
            t0 = _time(r["start_time"])
            for line in logs:
                print(f"    +{(_time(line['timestamp']) - t0).total_seconds():6.2f} {line['message'][:110]}")


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def report(rounds: list[Round], run: dict, run_wall: float) -> None:
    fmt = lambda x: "-" if x is None else f"{x:.2f}"
    print(
        f"\n{'round':<22} {'steps':>5} {'round wall':>10} {'stack wall':>10} {'job total':>9} {'job proc':>8}"
        f" {'loop cost':>9} {'incl start':>10} {'after job':>9} {'waiting':>7} {'between':>7}"
    )
    for r in rounds:
        print(
            f"{r.name:<22} {r.steps if r.steps is not None else '-':>5} {fmt(r.round_wall):>10} {fmt(r.stack_wall):>10}"
            f" {fmt(r.job_total):>9} {fmt(r.job_process):>8} {fmt(r.loop_cost):>9} {fmt(r.loop_cost_incl_start):>10}"
            f" {fmt(r.after_job):>9} {fmt(r.waiting):>7} {fmt(r.between):>7}"
        )
    mean = _mean([r.loop_cost for r in rounds])
    if mean is None:
        print("no round ran a job: nothing to measure")
        return
    ran = [r for r in rounds if r.loop_cost is not None]
    old = _mean([r.loop_cost_incl_start for r in ran])
    print(
        f"\nmean loop cost per round (round wall - job process): {mean:.2f} s over {len(ran)} round(s), "
        f"{mean / TARGET_S:.2f} of the {TARGET_S:.0f} s target ({'met' if mean <= TARGET_S else 'NOT met'}); "
        f"mean job process {_mean([r.job_process for r in ran]):.2f} s, of which job total "
        f"{_mean([r.job_total for r in ran]):.2f} s"
    )
    if old is not None:
        print(f"  the earlier figure, round wall - job total (counts the job's start-up): {old:.2f} s per round")
    after = _mean([r.after_job for r in ran])
    if after is not None:
        print(f"  of the loop cost, submitting, seeing the job end and collecting (stack wall - job proc): {after:.2f} s")
        print(
            f"  the rest (planning, grounding, deciding, Prefect's subflow bookkeeping): {mean - after:.2f} s per round"
        )
    between = _mean([r.between for r in rounds])
    if between is not None:
        print(f"  between rounds, in the parent run (iterations table, budget check): {between:.2f} s")
    loop = run.get("loop") or {}
    print(
        f"run: {run['state']['type']}, {run_wall:.0f} s from POST to end; GET /runs/{{id}} loop: {json.dumps(loop)}"
    )
    print(f"machine load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-iterations", type=int, default=3)
    parser.add_argument(
        "--no-expectations",
        action="store_true",
        help="send no expected genes: offline, no round is then scored and the loop stops after two (not assessable)",
    )
    parser.add_argument("--logs", action="store_true", help="print each round's log lines, timed from its start")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary directory (logs, outputs)",
    )
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="stackflows-bench-loop-"))
    try:
        t0 = time.perf_counter()
        inputs = make_inputs(home / "data")
        print(
            f"settings: {' '.join(f'{k}={v}' for k, v in SETTINGS.items())}; max_iterations={args.max_iterations}; "
            f"expectations: {'none' if args.no_expectations else json.dumps(EXPECTED)}"
        )
        with running_local_stack(
            home, home / "data", TOKEN, extra_env=SETTINGS
        ) as stack:
            print(f"inputs and local stack up in {time.perf_counter() - t0:.0f} s")
            body = inputs.request_body(
                "How do monocytes look among B cells?",
                num_steps=None,
                max_iterations=args.max_iterations,
                **({} if args.no_expectations else EXPECTED),
            )
            t1 = time.perf_counter()
            with stack.api() as api:
                posted = api.post("/runs", json=body)
                posted.raise_for_status()
                run_id = posted.json()["id"]
            run = stack.wait_for_run(run_id, timeout=RUN_TIMEOUT_S)
            run_wall = time.perf_counter() - t1
            rounds = measure(stack, run_id, args.logs)
            report(rounds, run, run_wall)
            return 0 if run["state"]["type"] == "COMPLETED" and rounds else 1
    finally:
        if args.keep:
            print(f"kept: {home} (logs/, data/)")
        else:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
