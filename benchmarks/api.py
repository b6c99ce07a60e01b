"""POST /runs under a burst of concurrent requests, against creating the same flow runs straight
through the Prefect client.

    .venv/bin/python -m benchmarks.api [--requests 500 --concurrency 50 --copies 2 --rounds 1]

Everything runs on 127.0.0.1 in processes this script starts and stops: a temporary Prefect server
(``prefect server start``, SQLite and PREFECT_HOME in a temporary directory) and the API as its own
process (``python -m api``, uvicorn) in front of it. A deployment is registered with the analysis
flow's parameter schema and no worker, as tests/api does, so every run stays Scheduled: what is
measured is creating runs, not running them.

Each side sends ``--requests`` requests per round from this process:

* direct (the baseline): ``PrefectClient.create_flow_run_from_deployment(deployment id, parameters,
  idempotency_key=...)``, ``--concurrency`` calls in flight: what a caller gets from Prefect itself;
* API: ``POST /runs`` (httpx.AsyncClient), ``--concurrency`` in flight: bearer token, body
  validation, the URI allow-list, ``arun_deployment(name, timeout=0, idempotency_key=sha256(body))``
  (a read of the deployment by name, then the create) and the response;
* direct at the API's pace: the same calls as the baseline with ``--trigger-concurrency`` in
  flight, the number of runs the API creates at once (``STACKFLOWS_API__TRIGGER_CONCURRENCY``):
  the API's own cost is its time over this one.

Every side sends the same shape of work: ``--requests / --copies`` distinct request bodies, each
sent ``--copies`` times in a shuffled order, so copies of one body are often in flight together. The
idempotency key must map every copy to one flow run: checked on the answers (one run id per body)
and on the server (flow runs of the deployment == distinct bodies sent). Each side sends its own
bodies, so every side creates runs rather than finds them; rounds rotate which side goes first.
Exits non-zero on any 5xx, any answer but 202 (new run) or 200 (replay), or broken idempotency.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from deployments.local_stack import stack_env, start_api, start_prefect_server
from deployments.processes import Process, free_port
from tests.api.schema_deployment import register_schema_deployment

TOKEN = "bench-token-7f3a"
DEPLOYMENT = "analysis-run/api-bench"
SERVER_START_S = 180  # a cold `prefect server start` on a busy 2-core machine
WARM_UP = 10  # distinct requests per side before measuring, not counted
ACCEPTED = {202, 200}  # a new run, a replay of one (duplicate bodies are sent on purpose)


@dataclass
class Side:
    """What one side answered over all rounds."""

    label: str
    concurrency: int
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    round_rps: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)  # 0: no answer (transport error)
    prefect_503: int = 0  # 'database is locked' answers the Prefect client retried (direct sides)
    errors: list[str] = field(default_factory=list)
    bodies_sent: int = 0
    runs_seen: int = 0
    split_bodies: int = 0  # bodies whose copies got more than one run id

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds

    def ms(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


Send = Callable[[dict], Awaitable[tuple[int, str | None]]]


def bodies_for(data_dir: Path, tag: str, distinct: int, copies: int, seed: int) -> list[dict]:
    """``distinct`` valid AnalysisRequest bodies, each ``copies`` times, shuffled."""
    h5ad = (data_dir / "inputs" / "pbmc.h5ad").as_uri()
    bodies = [
        {"question": f"How would B cells look among monocytes? ({tag} #{i})", "prompt_uri": h5ad, "query_uri": h5ad}
        for i in range(distinct)
    ] * copies
    random.Random(seed).shuffle(bodies)
    return bodies


async def burst(send: Send, bodies: list[dict], concurrency: int, side: Side) -> None:
    """Send every body with at most ``concurrency`` in flight; record latency, status and run id."""
    gate = asyncio.Semaphore(concurrency)
    run_ids: dict[str, set[str]] = {}

    async def one(body: dict) -> None:
        async with gate:
            t0 = time.perf_counter()
            try:
                status, run_id = await send(body)
            except Exception as e:  # a failed request is a finding, not a crashed benchmark
                status, run_id = 0, None
                side.errors.append(f"{type(e).__name__}: {e}"[:300])
            side.latencies.append(time.perf_counter() - t0)
        side.statuses[status] = side.statuses.get(status, 0) + 1
        if run_id is not None:
            run_ids.setdefault(body["question"], set()).add(str(run_id))

    t0 = time.perf_counter()
    await asyncio.gather(*(one(b) for b in bodies))
    elapsed = time.perf_counter() - t0
    side.seconds += elapsed
    side.round_rps.append(len(bodies) / elapsed)
    side.bodies_sent += len({b["question"] for b in bodies})
    side.runs_seen += len(set().union(*run_ids.values())) if run_ids else 0
    side.split_bodies += sum(1 for ids in run_ids.values() if len(ids) > 1)


async def measure(args: argparse.Namespace, api_url: str, deployment_id: str, data_dir: Path) -> tuple[list[Side], int]:
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    from api.runs import idempotency_key_for
    from tasks.request import AnalysisRequest

    direct = Side(f"direct create_flow_run_from_deployment, {args.concurrency} in flight (baseline)", args.concurrency)
    api = Side(f"POST /runs through the API, {args.concurrency} in flight", args.concurrency)
    paced = Side(
        f"direct, {args.trigger_concurrency} in flight (the API's trigger concurrency)", args.trigger_concurrency
    )
    current: list[Side] = [direct]

    async def count_prefect_503(response: httpx.Response) -> None:
        if response.status_code == 503:  # the client waits 2, 4, 8... s and sends it again
            current[0].prefect_503 += 1

    hooks = {"event_hooks": {"response": [count_prefect_503]}}
    async with get_client(httpx_settings=hooks) as prefect, httpx.AsyncClient(
        base_url=api_url,
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=300,
        limits=httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency),
    ) as http:

        async def via_prefect(body: dict) -> tuple[int, str]:
            request = AnalysisRequest.model_validate(body)
            run = await prefect.create_flow_run_from_deployment(
                deployment_id,
                parameters={"request": request.model_dump(mode="json")},
                idempotency_key=idempotency_key_for(request),
            )
            return 201, str(run.id)

        async def via_api(body: dict) -> tuple[int, str | None]:
            response = await http.post("/runs", json=body)
            if response.status_code not in ACCEPTED:
                api.errors.append(f"{response.status_code}: {response.text[:300]}")
                return response.status_code, None
            return response.status_code, response.json()["id"]

        sides: list[tuple[Side, Send]] = [(direct, via_prefect), (api, via_api), (paced, via_prefect)]
        if args.no_paced:
            sides.pop()
        warm = Side("warm-up", WARM_UP)
        for name, send in (("warm direct", via_prefect), ("warm api", via_api)):
            current[0] = warm
            await burst(send, bodies_for(data_dir, name, WARM_UP, 1, 0), WARM_UP, warm)

        distinct = args.requests // args.copies
        for r in range(args.rounds):
            for i in range(len(sides)):
                side, send = sides[(i + r) % len(sides)]
                current[0] = side
                bodies = bodies_for(data_dir, f"{side.label} round {r}", distinct, args.copies, seed=r)
                await burst(send, bodies, side.concurrency, side)

        runs = await prefect.count_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        )
    return [side for side, _ in sides], runs - warm.bodies_sent


def report(args: argparse.Namespace, sides: list[Side], runs_on_server: int) -> bool:
    direct, api = sides[0], sides[1]
    print(
        f"{args.requests} requests per side and round, {args.requests // args.copies} distinct bodies x "
        f"{args.copies} copies (shuffled), {args.rounds} round(s); Prefect server (SQLite) and API "
        f"(uvicorn, trigger concurrency {args.trigger_concurrency}) on 127.0.0.1, no worker"
    )
    print(
        f"  {'side':<72} {'req/s':>6} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'max ms':>7}"
        f"  {'runs/bodies':>11}  answers"
    )
    for side in sides:
        answers = " ".join(f"{code or 'none'}x{n}" for code, n in sorted(side.statuses.items()))
        if side is not api:
            answers += f" (Prefect 503s retried: {side.prefect_503})"
        if args.rounds > 1:
            answers += f" rounds: {', '.join(f'{x:.1f}' for x in side.round_rps)} req/s"
        print(
            f"  {side.label:<72} {side.rps:6.1f} {side.ms(0.5):7.0f} {side.ms(0.95):7.0f} {side.ms(0.99):7.0f} "
            f"{side.ms(1.0):7.0f}  {side.runs_seen:>5}/{side.bodies_sent:<5}  {answers}"
        )
    print(
        f"API/direct throughput ratio: {api.rps / direct.rps:.2f} (same {args.concurrency} in flight; "
        f"p99 latency API/direct {api.ms(0.99) / direct.ms(0.99):.2f})"
    )
    if len(sides) > 2:
        paced = sides[2]
        print(
            f"API/direct at the API's pace ({paced.concurrency} in flight): {api.rps / paced.rps:.2f} "
            f"(what the HTTP hop, validation and the deployment read cost)"
        )

    five_xx = sum(n for code, n in api.statuses.items() if code >= 500)
    checks = [
        ("API 5xx answers", five_xx),
        ("API answers other than 202/200 (or none)", sum(n for code, n in api.statuses.items() if code not in ACCEPTED)),
        ("bodies whose copies got different runs (all sides)", sum(s.split_bodies for s in sides)),
        ("run ids seen - distinct bodies sent (all sides)", sum(s.runs_seen - s.bodies_sent for s in sides)),
        ("direct calls that failed", sum(n for s in sides if s is not api for c, n in s.statuses.items() if c != 201)),
        ("flow runs on the server - distinct bodies sent", runs_on_server - sum(s.bodies_sent for s in sides)),
    ]
    for what, got in checks:
        print(f"  {'ok  ' if got == 0 else 'FAIL'} {what}: {got} (want 0)")
    for error in [e for s in sides for e in s.errors][:5]:
        print(f"  error: {error}")
    print(f"machine load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    return all(got == 0 for _, got in checks)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500, help="requests per side and round")
    parser.add_argument("--concurrency", type=int, default=50, help="requests in flight")
    parser.add_argument("--copies", type=int, default=2, help="times each distinct body is sent")
    parser.add_argument("--rounds", type=int, default=1, help="rounds; each rotates which side goes first")
    parser.add_argument(
        "--trigger-concurrency", type=int, default=None,
        help="STACKFLOWS_API__TRIGGER_CONCURRENCY for the API (default: the API's own default)",
    )
    parser.add_argument("--no-paced", action="store_true", help="skip the direct side at the API's pace")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, database)")
    args = parser.parse_args()
    if args.requests % args.copies:
        parser.error("--requests must be a multiple of --copies")
    if args.trigger_concurrency is None:
        from api.settings import ApiSettings

        args.trigger_concurrency = ApiSettings().trigger_concurrency

    home = Path(tempfile.mkdtemp(prefix="stackflows-bench-api-"))
    data_dir = home / "data"
    logs = home / "logs"
    logs.mkdir(parents=True)
    prefect_port, api_port = free_port(), free_port()
    prefect_url = f"http://127.0.0.1:{prefect_port}/api"
    env = stack_env(home, prefect_url, data_dir, TOKEN, ui=False)
    env.update(
        STACKFLOWS_API__DEPLOYMENT=DEPLOYMENT,
        STACKFLOWS_API__TRIGGER_CONCURRENCY=str(args.trigger_concurrency),
        # No worker: the late-runs service would only add its own writes to the runs being created.
        PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED="false",
    )
    # This process's Prefect client talks to the same server; set before prefect is imported.
    os.environ.update({k: v for k, v in env.items() if k.startswith("PREFECT_")})

    processes: list[Process] = []
    try:
        t0 = time.perf_counter()
        server = start_prefect_server(prefect_port, env, logs, timeout=SERVER_START_S)
        processes.append(server)
        print(f"Prefect server up in {time.perf_counter() - t0:.0f} s")
        deployment_id = asyncio.run(register_schema_deployment(DEPLOYMENT))
        api = start_api(api_port, env, logs)
        processes.append(api)
        api_url = f"http://127.0.0.1:{api_port}"
        sides, runs_on_server = asyncio.run(measure(args, api_url, deployment_id, data_dir))
        ok = report(args, sides, runs_on_server)
        if not ok:
            print(f"--- API log (tail) ---\n{api.tail(30)}\n--- Prefect server log (tail) ---\n{server.tail(30)}")
        return 0 if ok else 1
    finally:
        for process in reversed(processes):
            process.stop()
        if args.keep:
            print(f"kept: {home} (logs/, prefect.db)")
        else:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
