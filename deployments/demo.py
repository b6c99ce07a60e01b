"""``python -m deployments.demo [--keep]``: one analysis run on the embedded defaults, end to end.

It does what a user of the real system does, on this machine only: starts a Prefect server (SQLite,
with its UI), registers the deployments from prefect.yaml, starts a process worker and the HTTP API,
then asks for an analysis of scanpy's bundled ``pbmc68k_reduced`` through ``POST /runs`` and follows
it to the end. The STACK checkpoint is a small *untrained* one unless
``STACKFLOWS_MODEL__CHECKPOINT_URI`` names a real one; the report says so.

Everything lands under the data directory (``.stackflows/`` by default): inputs, the job, the report
and the Prefect database, so ``--keep`` (or a later ``prefect server start`` with the printed
``PREFECT_HOME``) shows the run in the UI.

While the stack is up, ``.stackflows/local-stack.env`` (mode 0600) holds the API URL and token and the
Prefect UI URL and login (the server requires its auth string); ``--keep`` also prints them, turns on
the scheduler (the nightly canary) and waits. Ctrl-C or SIGTERM stops every process the demo started.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from clients.settings import Settings, get_settings
from clients.storage import local_path_of
from deployments.demo_data import DemoData, prepare_demo_checkpoint, prepare_demo_data
from deployments.local_stack import LocalStack, model_env, running_local_stack
from deployments.processes import interrupted_by_signals
from tasks.report_text import md_unescape

PREFERRED_PORT = 4200  # Prefect's usual port, when it is free
RUN_TIMEOUT_S = 900
CREDENTIALS_FILE = "local-stack.env"  # under the data directory, while the stack is up


def demo_request(data: Path, gene_list: Path, checkpoint: str | None) -> dict:
    """Monocytes generated in the context of B and NK cells; the planner fills in the rest."""
    body = {
        "question": (
            "How would CD14+ monocytes look in the context of CD19+ B cells and CD56+ NK cells, "
            "and would their antigen presentation change?"
        ),
        "prompt_uri": data.as_uri(),
        "query_uri": data.as_uri(),
        "gene_list_uri": gene_list.as_uri(),
        "split_column": "bulk_labels",
        "query_obs_filter": {"bulk_labels": ["CD14+ Monocyte"]},
        "num_steps": 4,
        # Two rounds of the closed loop: the untrained model will not meet the score threshold.
        "max_iterations": 2,
    }
    if checkpoint:
        body["checkpoint_uri"] = checkpoint
    return body


def default_model_env(settings: Settings, demo: DemoData) -> dict[str, str]:
    """The worker's model when a run names none (the Prefect UI form's required fields only): the
    caller's, else the demo's untrained checkpoint and the gene list it was built over."""
    if settings.model.checkpoint_uri:
        return {}  # the caller's STACKFLOWS_MODEL__* reach the worker through passed_through_env
    return model_env(prepare_demo_checkpoint(demo.h5ad.parent, demo.gene_list), demo.gene_list)


def passed_through_env() -> dict[str, str]:
    """The caller's own settings (model, agent key, ...) go to the stack's worker; its paths and token do not."""
    own = {"STACKFLOWS_DATA_DIR", "STACKFLOWS_API__TOKEN"}
    return {
        k: v for k, v in os.environ.items()
        if (k.startswith("STACKFLOWS_") and k not in own) or k == "ANTHROPIC_API_KEY"
    }


def print_changes() -> Callable[[dict], None]:
    """An ``on_view`` for LocalStack.wait_for_run that prints the run's state and progress as they change."""
    last = ""

    def show(run: dict) -> None:
        nonlocal last
        state = run["state"] or {"name": "Pending"}
        progress = run.get("progress")
        line = f"  {state['name']}" + (f" - {progress['percent']:.0f}% of the GPU job" if progress else "")
        if line != last:
            print(line, flush=True)
            last = line

    return show


def report_url(run: dict) -> str | None:
    """The report page a browser opens: the API's signed URL of the run's report-html artifact."""
    return next((a.get("url") or a.get("link") for a in run["artifacts"] if a.get("key") == "report-html"), None)


def report_file(storage_root: str, run_id: str) -> Path | None:
    """report.md of a run, when the storage root is this machine's file system."""
    if not storage_root.startswith("file://"):
        return None
    path = local_path_of(storage_root) / "runs" / run_id / "report" / "report.md"
    return path if path.is_file() else None


def loop_line(loop: dict | None) -> str:
    """``Rounds: 2; best: round 1 (composite 3 of 10)...``: what the closed loop did, in one line."""
    if not loop:
        return "Rounds: none scored"
    best = loop.get("best_round")
    score = "not scored" if loop.get("best_score") is None else f"composite {loop['best_score']} of 10"
    threshold = get_settings().loop.score_threshold
    met = loop.get("best_score") is not None and loop["best_score"] >= threshold
    return (
        f"Rounds: {loop['rounds_done']}; best: round {best} ({score}; threshold {threshold:g} "
        f"{'met' if met else 'not met'}); {loop.get('last_decision') or ''}"
    )


def report_head(markdown: str) -> str:
    """The report's opening, as a user reads it first: the untrained warning (when there is one), the
    question and the score card; the rest (DE tables, enrichment, plots) is in the file. Shown on a
    terminal, so markdown's escapes are undone (the file keeps them)."""
    head, _, _ = markdown.partition("\n## Expectations")
    return md_unescape(head.rstrip())


def print_access(stack: LocalStack, credentials: Path, show_secrets: bool) -> None:
    """Where the API and the Prefect UI are and how to log in; the secrets themselves only with --keep."""
    print(f"API:        {stack.api_url} (docs: {stack.api_url}/docs)")
    print(f"Prefect UI: {stack.ui_url}")
    if show_secrets:
        print(f"  API token (Authorization: Bearer ...): {stack.api_token}")
        print(f"  Prefect UI login (the password field takes it whole): {stack.auth_string}")
    print(f"  Token and login for scripts (mode 0600, removed when the stack stops): {credentials}", flush=True)


def run_demo(stack: LocalStack, demo: DemoData, checkpoint: str) -> bool:
    """One analysis through POST /runs, followed to its end; True when it completed."""
    with stack.api() as api:
        # Each demo asks anew: without a key of its own, the same request within the API's window
        # would replay the previous demo's run (docs/api.md, idempotency).
        created = api.post(
            "/runs",
            json=demo_request(demo.h5ad, demo.gene_list, checkpoint),
            headers={"Idempotency-Key": f"demo-{secrets.token_hex(8)}"},
        )
    if created.status_code != 202:
        print(f"POST /runs answered {created.status_code}: {created.text}", file=sys.stderr)
        return False
    run = created.json()
    print(f"Run {run['name']} ({run['id']}) created through POST /runs\n  UI: {run['ui_url']}", flush=True)

    final = stack.wait_for_run(run["id"], timeout=RUN_TIMEOUT_S, on_view=print_changes())
    if final["state"]["type"] != "COMPLETED":
        print(f"The run ended {final['state']['name']}: {final['state']['message']}", file=sys.stderr)
        print(f"Worker log: {stack.home / 'logs' / 'worker.log'}", file=sys.stderr)
        return False
    print(loop_line(final.get("loop")), flush=True)
    report = report_file(get_settings().storage_root, run["id"])
    if report is not None:
        print("\n" + report_head(report.read_text()), flush=True)
    print(f"\nReport:  {report}\n         {report_url(final)}")
    print(f"UI:      {final['ui_url']}", flush=True)
    return True


def keep_up(stack: LocalStack) -> int:
    """Wait for Ctrl-C or SIGTERM (which stop the stack); a process that dies first ends the wait."""
    print("The stack stays up, the nightly canary scheduled; Ctrl-C (or SIGTERM) stops it.", flush=True)
    gone = stack.wait_for_exit()
    print(f"{gone.name} exited ({gone.popen.returncode}); stopping the rest:\n{gone.tail()}", file=sys.stderr)
    return 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keep", action="store_true",
        help="keep the server (with its scheduler), worker and API up until Ctrl-C or SIGTERM",
    )
    args = parser.parse_args()

    settings = get_settings()
    data_dir = settings.data_dir.resolve()
    demo = prepare_demo_data(data_dir / "demo")
    worker_model = default_model_env(settings, demo)
    checkpoint = settings.model.checkpoint_uri or worker_model["STACKFLOWS_MODEL__CHECKPOINT_URI"]
    print(f"Input: {demo.h5ad} ({demo.n_obs} cells x {demo.n_vars} genes, scanpy's pbmc68k_reduced as counts)")

    home = data_dir / "local-stack"
    port = PREFERRED_PORT if _port_free(PREFERRED_PORT) else None
    print(f"Starting a Prefect server, the deployments, a worker and the API (logs: {home / 'logs'})", flush=True)
    try:
        with interrupted_by_signals(), running_local_stack(
            home, data_dir, secrets.token_urlsafe(24), extra_env={**worker_model, **passed_through_env()},
            prefect_port=port, ui=True, scheduler=args.keep,
        ) as stack:
            credentials = stack.write_credentials(data_dir / CREDENTIALS_FILE)
            try:
                print_access(stack, credentials, show_secrets=args.keep)
                completed = run_demo(stack, demo, checkpoint)
                if not args.keep:
                    print(
                        f"(The server stops now. To browse the run later: PREFECT_HOME={home / 'prefect-home'} "
                        f"PREFECT_SERVER_DATABASE_CONNECTION_URL=sqlite+aiosqlite:///{home / 'prefect.db'} "
                        ".venv/bin/prefect server start; or run the demo with --keep.)"
                    )
                    return 0 if completed else 1
                return keep_up(stack)
            finally:
                credentials.unlink(missing_ok=True)
    except KeyboardInterrupt:
        print("Stopped: the server, worker and API are down.", flush=True)
        return 130


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


if __name__ == "__main__":
    sys.exit(main())
