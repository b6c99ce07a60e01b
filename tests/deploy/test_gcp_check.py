"""``deployments.setup gcp --check`` against tests/fake_iam.py: each account is checked as itself
(impersonated) through the real google-auth session, and what it lacks comes back with the gcloud
command that grants it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.oauth2 import service_account

from deployments.gcp_check import Accounts, CheckEndpoints, check_permissions
from deployments.setup import PROJECT_DIR
from tests.fake_iam import FakeIam, running_fake_iam

FLOW = "stackflows-flows@lab.iam.gserviceaccount.com"
VM = "stackflows-vm@lab.iam.gserviceaccount.com"
WORKER = "stackflows-worker@lab.iam.gserviceaccount.com"
ACCOUNTS = Accounts(
    project="lab", region="europe-west4", bucket="lab-bucket", flow=FLOW, vm=VM, worker=WORKER,
    ocr_service="lightonocr", secrets=["prefect-api-key"],
)
OCR = "services/lab/europe-west4/lightonocr"


def grant_everything(fake: FakeIam, *, invoker: str = FLOW) -> None:
    """The table in docs/deploy.md, with roles/run.invoker given to ``invoker``."""
    fake.grant(FLOW, "projects/lab", "roles/batch.jobsEditor")
    fake.grant(FLOW, f"serviceAccounts/{VM}", "roles/iam.serviceAccountUser")
    fake.grant(FLOW, "buckets/lab-bucket", "roles/storage.objectUser")
    fake.grant(FLOW, "secrets/lab/prefect-api-key", "roles/secretmanager.secretAccessor")
    fake.grant(invoker, OCR, "roles/run.invoker")
    fake.grant(VM, "projects/lab", "roles/batch.agentReporter", "roles/logging.logWriter")
    fake.grant(VM, "buckets/lab-bucket", "roles/storage.objectUser")
    fake.grant(WORKER, "projects/lab", "roles/run.developer")
    fake.grant(WORKER, f"serviceAccounts/{FLOW}", "roles/iam.serviceAccountUser")


@pytest.fixture
def fake() -> Iterator[FakeIam]:
    with running_fake_iam() as fake:
        yield fake


def endpoints(fake: FakeIam) -> CheckEndpoints:
    url = fake.url
    return CheckEndpoints(resource_manager=url, iam=url, iam_credentials=url, run=url, storage=url, secret_manager=url)


def source(fake: FakeIam, info: dict) -> service_account.Credentials:
    return service_account.Credentials.from_service_account_info(
        {**info, "token_uri": f"{fake.url}/token"}, scopes=["https://www.googleapis.com/auth/cloud-platform"]
    )


def test_a_complete_set_of_roles_passes_and_each_account_is_asked_as_itself(fake: FakeIam, service_account_info: dict) -> None:
    grant_everything(fake)
    assert check_permissions(ACCOUNTS, endpoints(fake), source(fake, service_account_info)) == []
    checked_as = {caller for method, path, caller in fake.requests if "testIam" in path or "testPermissions" in path}
    assert checked_as == {FLOW, VM, WORKER}


def test_the_ocr_invoker_role_on_the_workers_account_is_reported_for_the_flow_account(
    fake: FakeIam, service_account_info: dict
) -> None:
    """What the docs used to say: the worker never calls the OCR service, the flow run does."""
    grant_everything(fake, invoker=WORKER)
    (missing,) = check_permissions(ACCOUNTS, endpoints(fake), source(fake, service_account_info))
    assert missing.account == FLOW and missing.permissions == ("run.routes.invoke",)
    assert missing.fix == (
        "gcloud run services add-iam-policy-binding lightonocr --region=europe-west4 "
        f"--member=serviceAccount:{FLOW} --role=roles/run.invoker"
    )


def test_each_missing_role_names_its_grant(fake: FakeIam, service_account_info: dict) -> None:
    grant_everything(fake)
    fake.grants[(VM, "projects/lab")] = {"roles/batch.agentReporter"}  # no log writing
    del fake.grants[(WORKER, f"serviceAccounts/{FLOW}")]  # the worker may not act as the flow account
    described = "\n".join(m.describe() for m in check_permissions(ACCOUNTS, endpoints(fake), source(fake, service_account_info)))
    assert f"gcloud projects add-iam-policy-binding lab --member=serviceAccount:{VM} --role=roles/logging.logWriter" in described
    assert (
        f"gcloud iam service-accounts add-iam-policy-binding {FLOW} --member=serviceAccount:{WORKER} "
        "--role=roles/iam.serviceAccountUser"
    ) in described
    assert described.count("\n- ") == 1  # two findings, nothing else


def test_an_account_this_shell_cannot_impersonate_says_how_to_allow_it(fake: FakeIam, service_account_info: dict) -> None:
    grant_everything(fake)
    fake.token_creator_denied.add(VM)
    (missing,) = check_permissions(ACCOUNTS, endpoints(fake), source(fake, service_account_info))
    assert missing.account == VM and "roles/iam.serviceAccountTokenCreator" in missing.fix


def test_setup_check_from_the_command_line_stops_on_what_is_missing(
    fake: FakeIam, service_account_info: dict, tmp_path: Path
) -> None:
    grant_everything(fake)
    fake.grants.pop((FLOW, "buckets/lab-bucket"))
    key = tmp_path / "checker.json"
    key.write_text(json.dumps({**service_account_info, "token_uri": f"{fake.url}/token"}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "STACKFLOWS_", "GOOGLE_"))}
    env.update({
        "PREFECT_API_URL": "http://127.0.0.1:9/api",  # never reached: the check stops first
        "GOOGLE_APPLICATION_CREDENTIALS": str(key),
        "STACKFLOWS_DATA_DIR": str(tmp_path / "data"),
        "STACKFLOWS_STORAGE__ROOT": "gs://lab-bucket/stackflows",
        "STACKFLOWS_BATCH__PROJECT": "lab",
        "STACKFLOWS_BATCH__IMAGE": "europe-west4-docker.pkg.dev/lab/stackflows/stack-job:0.1.0",
        "STACKFLOWS_BATCH__SERVICE_ACCOUNT": VM,
        "STACKFLOWS_FLOW_IMAGE": "europe-west4-docker.pkg.dev/lab/stackflows/flow-run:0.1.0",
        "STACKFLOWS_GCP_REGION": "europe-west4",
        "STACKFLOWS_FLOW_SERVICE_ACCOUNT": FLOW,
        "STACKFLOWS_WORKER_SERVICE_ACCOUNT": WORKER,
        **{f"STACKFLOWS_IAM_CHECK__{name.upper()}": fake.url for name in CheckEndpoints.model_fields},
    })
    done = subprocess.run(
        [sys.executable, "-m", "deployments.setup", "gcp", "--check"],
        cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode != 0, done.stdout + done.stderr
    assert (
        f"gcloud storage buckets add-iam-policy-binding gs://lab-bucket --member=serviceAccount:{FLOW} "
        "--role=roles/storage.objectUser"
    ) in done.stderr, done.stderr
