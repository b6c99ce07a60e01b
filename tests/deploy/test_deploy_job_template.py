"""The Cloud Run v2 job template and prefect.yaml's cloud job variables, checked offline with
prefect-gcp's own configuration class and Prefect's own job-variable validation."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
import yaml
from prefect.client.schemas.objects import FlowRun
from prefect.utilities.schema_tools.validation import ValidationError, validate
from prefect_gcp.workers.cloud_run_v2 import CloudRunWorkerJobV2Configuration

from workers.job_template import (
    DEFAULT_TIMEOUT_S,
    prefect_gcp_default,
    stackflows_template,
)

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "workers" / "cloud-run-v2.job-template.json"
IMAGE = "us-central1-docker.pkg.dev/lab/stackflows/flow-run:0.1.0"
SA = "stackflows-flows@lab.iam.gserviceaccount.com"


def cloud_job_variables(name: str = "cloud-run") -> dict:
    """The job variables prefect.yaml gives a cloud deployment, env placeholders filled as at deploy time."""
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    (deployment,) = [d for d in config["deployments"] if d["name"] == name]
    filled = {"{{ $STACKFLOWS_FLOW_IMAGE }}": IMAGE, "{{ $STACKFLOWS_GCP_REGION }}": "europe-west4",
              "{{ $STACKFLOWS_FLOW_SERVICE_ACCOUNT }}": SA}
    return {k: filled.get(v, v) if isinstance(v, str) else v for k, v in deployment["work_pool"]["job_variables"].items()}


@pytest.fixture(scope="module")
def credentials(service_account_info: dict) -> dict:
    return {"service_account_info": service_account_info, "project": "lab"}


def server_validates(template: dict, job_variables: dict) -> None:
    """What the Prefect server does with a deployment's job variables against its pool's template."""
    validate(job_variables, template["variables"], raise_on_error=True, preprocess=True,
             ignore_required=True, allow_none_with_default=True)


def test_committed_template_is_the_generated_one() -> None:
    assert json.loads(COMMITTED.read_text()) == stackflows_template(), (
        "workers/cloud-run-v2.job-template.json is stale: python -m workers.job_template > "
        "workers/cloud-run-v2.job-template.json"
    )


def test_template_keeps_prefect_gcps_job_configuration() -> None:
    """Only variable defaults change: the job body the worker fills in is prefect-gcp's own."""
    assert stackflows_template()["job_configuration"] == prefect_gcp_default()["job_configuration"]
    assert set(stackflows_template()["variables"]["properties"]) == set(
        prefect_gcp_default()["variables"]["properties"]
    )


def test_prefect_yaml_cloud_job_variables_become_a_valid_cloud_run_job(credentials: dict, prefect_api: None) -> None:
    template = stackflows_template(env={"STACKFLOWS_BATCH__BACKEND": "cloud"})
    job_variables = cloud_job_variables()
    server_validates(template, job_variables)

    config = asyncio.run(
        CloudRunWorkerJobV2Configuration.from_template_and_values(
            template, {**job_variables, "credentials": credentials}
        )
    )
    flow_run = FlowRun(id=uuid.uuid4(), name="brave-otter", flow_id=uuid.uuid4())
    config.prepare_for_flow_run(flow_run)

    container = config.job_body["template"]["template"]["containers"][0]
    assert container["image"] == IMAGE
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "4Gi"}
    assert config.job_body["template"]["template"]["timeout"] == f"{DEFAULT_TIMEOUT_S}s"  # the pool's derived one
    assert config.job_body["template"]["template"]["serviceAccount"] == SA
    assert config.job_body["template"]["template"]["maxRetries"] == 0
    assert config.region == "europe-west4"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["STACKFLOWS_BATCH__BACKEND"] == "cloud"  # pool defaults reach the container
    assert env["PREFECT__FLOW_RUN_ID"] == str(flow_run.id)
    assert config.project == "lab"


def test_pool_defaults_fill_what_a_deployment_leaves_out(credentials: dict, prefect_api: None) -> None:
    template = stackflows_template(image=IMAGE, region="europe-west4", service_account=SA)
    config = asyncio.run(
        CloudRunWorkerJobV2Configuration.from_template_and_values(template, {"credentials": credentials})
    )
    config.prepare_for_flow_run(FlowRun(id=uuid.uuid4(), name="calm-heron", flow_id=uuid.uuid4()))
    container = config.job_body["template"]["template"]["containers"][0]
    assert container["image"] == IMAGE
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "4Gi"}
    assert config.job_body["template"]["template"]["timeout"] == f"{DEFAULT_TIMEOUT_S}s"


@pytest.mark.parametrize(
    "bad",
    [{"memory": "4GB"}, {"memory": 4096}, {"cpu": 2}, {"cpu": "two"}, {"timeout": "6h"}],
)
def test_the_server_refuses_malformed_resources(bad: dict) -> None:
    with pytest.raises(ValidationError):
        server_validates(stackflows_template(), {**cloud_job_variables(), **bad})


def test_every_deployment_pins_its_pull_step_and_parameter_schema() -> None:
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    for deployment in config["deployments"]:
        assert deployment["pull"], deployment["name"]
        assert deployment["enforce_parameter_schema"] is True
        assert deployment["concurrency_limit"]["limit"] >= 1
        directory = deployment["pull"][0]["prefect.deployments.steps.set_working_directory"]["directory"]
        expected = "/opt/stackflows" if deployment["work_pool"]["name"] == "stackflows-cloud-run" else "{{ project-dir.stdout }}"
        assert directory == expected, deployment["name"]
