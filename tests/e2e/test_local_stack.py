"""The local stack as a user meets it outside our API: Prefect's own server asks for its auth string,
the Prefect UI's paths (a run with only the form's required fields, the nightly canary) complete on
the embedded defaults, and ``demo --keep`` hands out its credentials privately and stops everything
it started when told to.

Runs made here through Prefect's API go around our API, as the UI's do. The session's stack fails
every run once on purpose (conftest.fault_env); these runs switch that off for themselves through
the process pool's ``env`` job variable, which the UI's run form offers too.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from deployments.local_stack import PROJECT_DIR, prefect_auth_headers
from deployments.processes import Process, alive, descendants, start, wait_until
from tests.e2e.conftest import System

pytestmark = pytest.mark.e2e

NO_FAULTS = {"env": {"STACKFLOWS_FAULTS__FAIL_ONCE_AFTER": "[]"}}
DEMO_UP_S = 900  # demo data, checkpoint, server, `prefect deploy`, worker and API on a busy 2-core machine


def deployment(system: System, name: str) -> dict:
    with system.prefect() as prefect:
        return prefect.get(f"/deployments/name/analysis-run/{name}").raise_for_status().json()


def create_flow_run(system: System, deployment_name: str, parameters: dict | None = None) -> str:
    """A flow run of a deployment made the way the Prefect UI's Run button makes it."""
    body: dict = {"job_variables": NO_FAULTS, "state": {"type": "SCHEDULED"}}
    if parameters is not None:
        body["parameters"] = parameters
    deployment_id = deployment(system, deployment_name)["id"]
    with system.prefect() as prefect:
        created = prefect.post(f"/deployments/{deployment_id}/create_flow_run", json=body)
    assert created.status_code == 201, created.text
    return created.json()["id"]


def test_the_prefect_server_refuses_calls_without_its_auth_string(system: System) -> None:
    local_id = deployment(system, "local")["id"]
    run = {"parameters": {"request": system.request("anonymous run")}}
    with system.prefect(authenticated=False) as anonymous:
        assert anonymous.post(f"/deployments/{local_id}/create_flow_run", json=run).status_code == 401
        assert anonymous.post("/flow_runs/filter", json={"limit": 1}).status_code == 401
        assert anonymous.get("/health").status_code == 200  # liveness probes stay open, and say nothing
    wrong = prefect_auth_headers("admin:not-the-password")
    with httpx.Client(base_url=system.prefect_url, headers=wrong, timeout=30) as guesser:
        assert guesser.post("/flow_runs/filter", json={"limit": 1}).status_code == 401
    with system.prefect() as prefect:
        assert prefect.post("/flow_runs/filter", json={"limit": 1}).status_code == 200
    assert system.auth_string.startswith("admin:") and len(system.auth_string) > 30


def test_a_run_with_only_the_ui_forms_required_fields_completes_on_the_defaults(system: System) -> None:
    h5ad = system.inputs.h5ad.as_uri()
    required = {"question": "How do CD14+ monocytes look among CD19+ B cells?", "prompt_uri": h5ad, "query_uri": h5ad}
    run_id = create_flow_run(system, "local", {"request": required})

    done = system.wait_for_run(run_id)
    assert done["state"]["type"] == "COMPLETED", done["state"]
    with system.prefect() as prefect:
        parameters = prefect.get(f"/flow_runs/{run_id}").json()["parameters"]["request"]
    assert "checkpoint_uri" not in parameters or parameters["checkpoint_uri"] is None  # the worker's default ran
    logs = "".join(p.log.read_text(errors="replace") for p in system.processes)
    assert system.auth_string not in logs and system.api_token not in logs

    # The stack's worker knows the API's address, so the run page links its report through the API.
    (html,) = [a for a in done["artifacts"] if a["key"] == "report-html"]
    assert html["link"].startswith(f"{system.api_url}/runs/{run_id}/files/"), html
    assert httpx.get(html["url"], timeout=30).status_code == 200


def test_the_nightly_canary_runs_on_the_local_stack(system: System) -> None:
    request = deployment(system, "nightly-canary")["parameters"]["request"]
    for field in ("prompt_uri", "query_uri", "gene_list_uri", "checkpoint_uri"):
        path = Path(request[field].removeprefix("file://"))
        assert request[field].startswith("file:///") and path.is_file(), (field, request[field])
        assert path.is_relative_to(system.data_dir.resolve()), "the canary reads outside the allowed roots"

    run_id = create_flow_run(system, "nightly-canary")  # its own parameters, as the schedule runs it
    done = system.wait_for_run(run_id, timeout=600)
    assert done["state"]["type"] == "COMPLETED", done["state"]


# --- demo --keep ----------------------------------------------------------------------------------


def read_env_file(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def scheduled_canary_runs(credentials: dict[str, str]) -> list[dict]:
    body = {
        "deployments": {"name": {"any_": ["nightly-canary"]}},
        "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
        "limit": 5,
    }
    headers = prefect_auth_headers(credentials["PREFECT_API_AUTH_STRING"])
    return httpx.post(f"{credentials['PREFECT_API_URL']}/flow_runs/filter", json=body, headers=headers).json()


def start_demo(tmp_path: Path) -> tuple[Process, Path]:
    """``python -m deployments.demo --keep`` as a user starts it, with its own data directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "STACKFLOWS_", "ANTHROPIC_"))}
    env["STACKFLOWS_DATA_DIR"] = str(tmp_path / "data")
    command = [sys.executable, "-m", "deployments.demo", "--keep"]
    return start("demo", command, env, tmp_path, PROJECT_DIR), tmp_path / "data" / "local-stack.env"


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_demo_keep_hands_out_its_credentials_privately_and_stopping_it_stops_all_it_started(
    tmp_path: Path, stop: signal.Signals
) -> None:
    demo, env_file = start_demo(tmp_path)
    try:
        wait_until(env_file.exists, DEMO_UP_S, "the demo's stack to come up", watch=[demo])
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        credentials = read_env_file(env_file)
        login = credentials["PREFECT_UI_LOGIN"]
        assert login == credentials["PREFECT_API_AUTH_STRING"] and login.startswith("admin:")
        wait_until(lambda: login in demo.log.read_text(), 60, "--keep to print the UI login", watch=[demo])
        assert credentials["STACKFLOWS_API__TOKEN"] in demo.log.read_text()

        prefect = credentials["PREFECT_API_URL"]
        assert httpx.post(f"{prefect}/flow_runs/filter", json={}).status_code == 401
        runs = httpx.get(f"{credentials['STACKFLOWS_API_URL']}/runs/00000000-0000-0000-0000-000000000000",
                         headers={"Authorization": f"Bearer {credentials['STACKFLOWS_API__TOKEN']}"})
        assert runs.status_code == 404, runs.text  # the token is the API's
        assert wait_until(lambda: scheduled_canary_runs(credentials), 120, "the scheduler to plan the canary",
                          watch=[demo])
        # The demo's own run prints the report's opening: the untrained warning first, then the score card.
        printed = wait_until(lambda: "Report:" in (log := demo.log.read_text()) and log, DEMO_UP_S,
                             "the demo's run to print its report", watch=[demo])
        assert printed.index("# Untrained model") < printed.index("## Score card") < printed.index("Report:")
        assert "| composite |" in printed and "\\(" not in printed  # a table a terminal reads: no escapes

        started = descendants(demo.popen.pid)  # server, worker, API and whatever they started
        assert len(started) >= 3, started
        # SIGTERM: what `kill` and service managers send. Ctrl-C: a terminal sends SIGINT to its
        # foreground process group, which is the demo alone (each child has a session of its own).
        demo.popen.send_signal(stop)
        assert demo.popen.wait(timeout=120) == 130, demo.tail()
        left = [p for p in started if alive(p)]
        assert left == [], f"still running after {stop.name}: {left}"
        assert not env_file.exists(), "stale credentials left behind"
        assert "Stopped" in demo.tail()
    finally:
        demo.stop()
