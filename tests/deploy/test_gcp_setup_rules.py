"""What ``deployments.setup gcp`` refuses and what it writes into the Cloud Run pool: timeouts that
nest (Cloud Run must not kill a flow still waiting for its GPU job), a real Batch image and project,
the Prefect API key as a Secret Manager reference rather than a plain variable, heartbeats on."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
import yaml
from prefect.client.schemas.objects import FlowRun
from prefect.settings import PREFECT_API_KEY, temporary_settings
from prefect_gcp.workers.cloud_run_v2 import CloudRunWorkerJobV2Configuration

from clients.batch.settings import BatchSettings
from clients.loop_settings import MAX_ITERATIONS
from clients.settings import Settings, flow_run_timeout_s
from clients.storage.settings import StorageSettings
from deployments import setup as deploy_setup
from tests.deploy.test_deploy_job_template import cloud_job_variables

IMAGE = "europe-west4-docker.pkg.dev/lab/stackflows/stack-job:0.1.0"


@pytest.fixture
def gcp_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STACKFLOWS_FLOW_IMAGE", "europe-west4-docker.pkg.dev/lab/stackflows/flow-run:0.1.0")
    monkeypatch.setenv("STACKFLOWS_GCP_REGION", "europe-west4")
    monkeypatch.setenv("STACKFLOWS_FLOW_SERVICE_ACCOUNT", "stackflows-flows@lab.iam.gserviceaccount.com")
    for var in (deploy_setup.API_KEY_SECRET_VAR, deploy_setup.AUTH_STRING_SECRET_VAR, "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(var, raising=False)


def gcp_settings(tmp_path: Path, **batch: object) -> Settings:
    return Settings(
        data_dir=tmp_path,
        storage=StorageSettings(root="gs://lab-bucket/stackflows", project="lab"),
        batch=BatchSettings(**{"project": "lab", "image": IMAGE, **batch}),
    )


def cloud_run_job(template: dict, credentials: dict) -> dict:
    """The Cloud Run job the worker would create for a run of prefect.yaml's cloud deployment."""
    config = asyncio.run(
        CloudRunWorkerJobV2Configuration.from_template_and_values(
            template, {**cloud_job_variables(), "credentials": credentials}
        )
    )
    config.prepare_for_flow_run(FlowRun(id=uuid.uuid4(), name="quiet-lynx", flow_id=uuid.uuid4()))
    return config.job_body["template"]["template"]


@pytest.fixture
def credentials(service_account_info: dict) -> dict:
    return {"service_account_info": service_account_info, "project": "lab"}


def test_the_cloud_run_timeout_outlasts_every_gpu_wait_of_a_run(
    gcp_env: None, tmp_path: Path, credentials: dict, prefect_api: None
) -> None:
    """A run waits for up to MAX_ITERATIONS rounds' GPU jobs (each again after a Spot preemption it
    retries), each up to wait_timeout_s, and each round's merge, after staging and OCR: the job Cloud Run runs it in must live
    longer than all of that, or the GPU job is orphaned."""
    settings = gcp_settings(tmp_path, wait_timeout_s=3 * 3600)
    job = cloud_run_job(deploy_setup.cloud_pool_template(settings), credentials)
    timeout = int(job["timeout"].removesuffix("s"))
    waits = MAX_ITERATIONS * (1 + settings.batch.max_preemption_retries)
    merges = MAX_ITERATIONS * settings.batch.wait_timeout_for(gpu=False)  # a sharded round waits for its merge too
    assert timeout == waits * 3 * 3600 + merges + settings.flow_run_margin_s
    assert timeout > waits * settings.batch.wait_timeout_s + merges


def test_a_wait_that_does_not_outlast_the_batch_run_duration_is_refused(gcp_env: None, tmp_path: Path) -> None:
    settings = gcp_settings(tmp_path, wait_timeout_s=4 * 3600, max_run_duration_s=4 * 3600)
    with pytest.raises(deploy_setup.SetupError, match="Raise STACKFLOWS_BATCH__WAIT_TIMEOUT_S"):
        deploy_setup.check_environment("gcp", settings)


def test_a_flow_run_timeout_beyond_cloud_runs_limit_is_refused(gcp_env: None, tmp_path: Path) -> None:
    settings = gcp_settings(tmp_path, wait_timeout_s=2 * 24 * 3600)
    with pytest.raises(deploy_setup.SetupError, match="lower STACKFLOWS_BATCH__WAIT_TIMEOUT_S"):
        deploy_setup.check_environment("gcp", settings)


def test_a_deployment_timeout_below_the_gpu_waits_is_refused(tmp_path: Path) -> None:
    config = yaml.safe_load((deploy_setup.PROJECT_DIR / "prefect.yaml").read_text())
    for deployment in config["deployments"]:
        if deployment["name"] == "cloud-run":
            deployment["work_pool"] = {**deployment["work_pool"], "job_variables": {"timeout": 21600}}
    (tmp_path / "prefect.yaml").write_text(yaml.safe_dump(config))
    (problem,) = deploy_setup.deployment_timeout_problems(Settings(), tmp_path)
    assert "cloud-run sets timeout: 21600" in problem and "remove it" in problem
    assert deploy_setup.deployment_timeout_problems(Settings()) == []  # this checkout's prefect.yaml


def test_the_timeout_rule_lives_in_one_place() -> None:
    batch = BatchSettings(wait_timeout_s=600, max_preemption_retries=1, shard_cells=None)
    assert flow_run_timeout_s(batch, margin_s=60, rounds=2) == 2 * 2 * 600 + 60


def test_the_timeout_leaves_room_for_a_sharded_rounds_merge() -> None:
    """Each round may wait for its shards (once per preemption retry) and then once for its merge: the merge's
    run limit plus the queue allowance GPU jobs get (wait - max run duration)."""
    batch = BatchSettings(wait_timeout_s=600, max_run_duration_s=500, max_preemption_retries=1, merge_timeout_s=120)
    assert batch.wait_timeout_for(gpu=False) == 120 + 100
    assert flow_run_timeout_s(batch, margin_s=60, rounds=2) == 2 * (2 * 600 + 220) + 60
    assert flow_run_timeout_s(Settings().batch) < 7 * 24 * 3600  # the defaults still fit Cloud Run's 7 days


@pytest.mark.parametrize(
    ("batch", "named"),
    [
        ({"project": None}, "STACKFLOWS_BATCH__PROJECT"),
        ({"project": "PROJECT"}, "STACKFLOWS_BATCH__PROJECT"),
        ({"image": BatchSettings.model_fields["image"].default}, "STACKFLOWS_BATCH__IMAGE"),
        ({"image": "us-docker.pkg.dev/lab/stackflows/…"}, "STACKFLOWS_BATCH__IMAGE"),
    ],
)
def test_a_placeholder_batch_image_or_project_is_refused(
    gcp_env: None, tmp_path: Path, prefect_api: None, batch: dict, named: str
) -> None:
    with pytest.raises(deploy_setup.SetupError, match=named):
        asyncio.run(deploy_setup.setup("gcp", gcp_settings(tmp_path, **batch)))


def test_the_prefect_api_key_reaches_flow_runs_from_secret_manager_only(
    gcp_env: None, tmp_path: Path, credentials: dict, prefect_api: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker with a PREFECT_API_KEY hands it to every job it creates; the pool names the secret
    instead, and prefect-gcp then sends a secretKeyRef and drops the plain value."""
    monkeypatch.setenv(deploy_setup.API_KEY_SECRET_VAR, "lab-prefect-key")
    with temporary_settings({PREFECT_API_KEY: "pnu_worker-key-123"}):
        template = deploy_setup.cloud_pool_template(gcp_settings(tmp_path))
        job = cloud_run_job(template, credentials)

    variables = template["variables"]["properties"]
    assert variables["prefect_api_key_secret"]["default"] == {"secret": "lab-prefect-key", "version": "latest"}
    assert "PREFECT_API_KEY" not in variables["env"]["default"]
    env = job["containers"][0]["env"]
    (key,) = [e for e in env if e["name"] == "PREFECT_API_KEY"]
    assert key == {"name": "PREFECT_API_KEY", "valueSource": {"secretKeyRef": {"secret": "lab-prefect-key", "version": "latest"}}}
    assert "pnu_worker-key-123" not in str(job)


def test_a_key_in_the_shell_gets_the_default_secret_name(gcp_env: None, tmp_path: Path) -> None:
    with temporary_settings({PREFECT_API_KEY: "pnu_x"}):
        assert deploy_setup.prefect_secrets() == (deploy_setup.DEFAULT_API_KEY_SECRET, None)
    with temporary_settings({PREFECT_API_KEY: None}):
        assert deploy_setup.prefect_secrets() == (None, None)


def test_cloud_flow_runs_send_heartbeats(gcp_env: None, tmp_path: Path, credentials: dict, prefect_api: None) -> None:
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 45}):
        job = cloud_run_job(deploy_setup.cloud_pool_template(gcp_settings(tmp_path)), credentials)
    env = {e["name"]: e.get("value") for e in job["containers"][0]["env"]}
    assert env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "45"  # the value the automation's window is built on
