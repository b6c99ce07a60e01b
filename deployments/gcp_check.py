"""``python -m deployments.setup gcp --check``: does every service account have what its part needs?

Three identities take part in a Cloud Run run (docs/deploy.md, "Service accounts and roles"): the
**worker** creates a Cloud Run job per flow run, acting as the **flow** account; the flow run calls
Batch, the OCR service and storage, and makes Batch VMs act as the **VM** account, which reports to
Batch, writes logs and reads/writes the bucket. A missing role shows up only hours into a real
run, so the set-up asks Google first.

``testIamPermissions`` answers for the caller, so each account is checked *as itself*: this
shell's credentials impersonate it (IAM Credentials ``generateAccessToken``, which needs
``roles/iam.serviceAccountTokenCreator`` on it) and ask each resource which of the permissions a
role gives it holds. Every endpoint can be pointed elsewhere (``STACKFLOWS_IAM_CHECK__*``), which
is how tests/fake_iam.py answers on loopback.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import google.auth
from google.auth import impersonated_credentials
from google.auth.credentials import Credentials
from google.auth.exceptions import GoogleAuthError
from google.auth.transport.requests import AuthorizedSession
from pydantic import BaseModel
from pydantic_settings import BaseSettings, SettingsConfigDict

from clients.settings import Settings

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
WORKER_ACCOUNT_VAR = "STACKFLOWS_WORKER_SERVICE_ACCOUNT"
OCR_SERVICE_VAR = "STACKFLOWS_OCR_SERVICE"  # the OCR service's Cloud Run name (its region: STACKFLOWS_GCP_REGION)

ResourceKind = Literal["project", "service_account", "run_service", "bucket", "secret"]

# The permissions of each role that our runs use, and that testIamPermissions can test.
ROLE_PERMISSIONS: dict[str, tuple[str, ...]] = {
    "roles/batch.jobsEditor": ("batch.jobs.create", "batch.jobs.get", "batch.jobs.delete", "batch.tasks.list"),
    "roles/iam.serviceAccountUser": ("iam.serviceAccounts.actAs",),
    "roles/run.invoker": ("run.routes.invoke",),
    "roles/storage.objectUser": ("storage.objects.create", "storage.objects.get", "storage.objects.list"),
    "roles/batch.agentReporter": ("batch.states.report",),
    "roles/logging.logWriter": ("logging.logEntries.create",),
    "roles/run.developer": ("run.jobs.create", "run.jobs.get", "run.jobs.run", "run.jobs.delete", "run.executions.get"),
    "roles/secretmanager.secretAccessor": ("secretmanager.versions.access",),
}


class CheckEndpoints(BaseSettings):
    """Where the checks are sent (``STACKFLOWS_IAM_CHECK__<NAME>``); Google's endpoints by default."""

    model_config = SettingsConfigDict(env_prefix="STACKFLOWS_IAM_CHECK__", extra="ignore")

    resource_manager: str = "https://cloudresourcemanager.googleapis.com"
    iam: str = "https://iam.googleapis.com"
    iam_credentials: str = "https://iamcredentials.googleapis.com"
    run: str = "https://run.googleapis.com"
    storage: str = "https://storage.googleapis.com"
    secret_manager: str = "https://secretmanager.googleapis.com"


class Accounts(BaseModel):
    """The identities and resources a Cloud Run deployment uses."""

    project: str
    region: str
    bucket: str
    flow: str
    vm: str
    worker: str
    ocr_service: str | None = None
    secrets: list[str] = []


@dataclass(frozen=True)
class Requirement:
    who: Literal["flow", "vm", "worker"]
    account: str
    role: str
    kind: ResourceKind
    resource: str  # project id, account email, service name, bucket or secret name

    def grant_command(self, accounts: Accounts) -> str:
        member = f"--member=serviceAccount:{self.account} --role={self.role}"
        return {
            "project": f"gcloud projects add-iam-policy-binding {self.resource} {member}",
            "service_account": f"gcloud iam service-accounts add-iam-policy-binding {self.resource} {member}",
            "run_service": f"gcloud run services add-iam-policy-binding {self.resource} --region={accounts.region} {member}",
            "bucket": f"gcloud storage buckets add-iam-policy-binding gs://{self.resource} {member}",
            "secret": f"gcloud secrets add-iam-policy-binding {self.resource} --project={accounts.project} {member}",
        }[self.kind]


@dataclass(frozen=True)
class Missing:
    """What one account lacks on one resource, and the command that grants it."""

    requirement: Requirement | None
    account: str
    permissions: tuple[str, ...]
    fix: str
    reason: str = ""

    def describe(self) -> str:
        if self.requirement is None:
            return f"- {self.account}: {self.reason}\n    {self.fix}"
        r = self.requirement
        lacks = ", ".join(self.permissions)
        detail = f" ({self.reason})" if self.reason else ""
        return f"- {r.who} account {r.account} lacks {lacks} on {r.kind} {r.resource} ({r.role}){detail}\n    {self.fix}"


def requirements(a: Accounts) -> list[Requirement]:
    """Every account's roles, as the table in docs/deploy.md lists them."""
    needs = [
        Requirement("flow", a.flow, "roles/batch.jobsEditor", "project", a.project),
        Requirement("flow", a.flow, "roles/iam.serviceAccountUser", "service_account", a.vm),
        Requirement("flow", a.flow, "roles/storage.objectUser", "bucket", a.bucket),
        Requirement("vm", a.vm, "roles/batch.agentReporter", "project", a.project),
        Requirement("vm", a.vm, "roles/logging.logWriter", "project", a.project),
        Requirement("vm", a.vm, "roles/storage.objectUser", "bucket", a.bucket),
        Requirement("worker", a.worker, "roles/run.developer", "project", a.project),
        Requirement("worker", a.worker, "roles/iam.serviceAccountUser", "service_account", a.flow),
    ]
    if a.ocr_service:
        needs.append(Requirement("flow", a.flow, "roles/run.invoker", "run_service", a.ocr_service))
    needs += [Requirement("flow", a.flow, "roles/secretmanager.secretAccessor", "secret", s) for s in a.secrets]
    return needs


def accounts_from_env(settings: Settings) -> Accounts:
    """The accounts of this deploying shell's settings; names what is missing for a check."""
    from deployments.setup import SetupError, prefect_secrets

    missing = [v for v in (WORKER_ACCOUNT_VAR,) if not os.environ.get(v)]
    if not settings.batch.service_account:
        missing.append("STACKFLOWS_BATCH__SERVICE_ACCOUNT (the GPU VMs' account)")
    if settings.ocr.service_url and not os.environ.get(OCR_SERVICE_VAR):
        missing.append(f"{OCR_SERVICE_VAR} (the OCR service's Cloud Run name, to check roles/run.invoker)")
    if missing:
        raise SetupError(f"--check needs {', '.join(missing)}")
    return Accounts(
        project=settings.batch.project or "",
        region=os.environ["STACKFLOWS_GCP_REGION"],
        bucket=settings.storage_root.removeprefix("gs://").partition("/")[0],
        flow=os.environ["STACKFLOWS_FLOW_SERVICE_ACCOUNT"],
        vm=settings.batch.service_account or "",
        worker=os.environ[WORKER_ACCOUNT_VAR],
        ocr_service=os.environ.get(OCR_SERVICE_VAR) or None,
        secrets=[s for s in prefect_secrets() if s],
    )


def endpoints_from_env() -> CheckEndpoints:
    return CheckEndpoints()


class _Checker:
    """Asks each resource, as one impersonated account, which permissions that account holds."""

    def __init__(self, accounts: Accounts, endpoints: CheckEndpoints, session: AuthorizedSession) -> None:
        self.a, self.e, self.session = accounts, endpoints, session

    def granted(self, r: Requirement, permissions: tuple[str, ...]) -> set[str]:
        a, e = self.a, self.e
        if r.kind == "bucket":
            url = f"{e.storage}/storage/v1/b/{r.resource}/iam/testPermissions"
            reply = self.session.get(url, params=[("permissions", p) for p in permissions], timeout=30)
        else:
            url = {
                "project": f"{e.resource_manager}/v3/projects/{r.resource}:testIamPermissions",
                "service_account": f"{e.iam}/v1/projects/-/serviceAccounts/{r.resource}:testIamPermissions",
                "run_service": f"{e.run}/v2/projects/{a.project}/locations/{a.region}/services/{r.resource}:testIamPermissions",
                "secret": f"{e.secret_manager}/v1/projects/{a.project}/secrets/{r.resource}:testIamPermissions",
            }[r.kind]
            reply = self.session.post(url, json={"permissions": list(permissions)}, timeout=30)
        if reply.status_code != 200:
            raise _Refused(f"{reply.status_code} from {url}: {_message(reply)}")
        return set(reply.json().get("permissions", []))


class _Refused(Exception):
    """A testIamPermissions call answered with an error (no such resource, API off, ...)."""


def _message(reply) -> str:
    try:
        return reply.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return reply.text[:200]


def impersonate(source: Credentials, account: str, endpoints: CheckEndpoints) -> Credentials:
    return impersonated_credentials.Credentials(
        source_credentials=source,
        target_principal=account,
        target_scopes=SCOPES,
        iam_endpoint_override=f"{endpoints.iam_credentials}/v1/projects/-/serviceAccounts/{account}:generateAccessToken",
    )


def check_permissions(
    accounts: Accounts, endpoints: CheckEndpoints, source: Credentials | None = None
) -> list[Missing]:
    """Every requirement no account meets, each with the gcloud command that grants it."""
    if source is None:
        source, _ = google.auth.default(scopes=SCOPES)
    missing: list[Missing] = []
    by_account: dict[str, list[Requirement]] = {}
    for r in requirements(accounts):
        by_account.setdefault(r.account, []).append(r)
    for account, needs in by_account.items():
        session = AuthorizedSession(impersonate(source, account, endpoints))
        checker = _Checker(accounts, endpoints, session)
        try:
            missing += _check_account(checker, accounts, needs)
        except GoogleAuthError as e:
            missing.append(Missing(
                None, account, (), reason=f"this shell cannot act as it to check its permissions ({e})",
                fix=f"gcloud iam service-accounts add-iam-policy-binding {account} --member=<you> "
                "--role=roles/iam.serviceAccountTokenCreator",
            ))
        finally:
            session.close()
    return missing


def _check_account(checker: _Checker, accounts: Accounts, needs: Iterable[Requirement]) -> list[Missing]:
    missing = []
    for r in needs:
        wanted = ROLE_PERMISSIONS[r.role]
        try:
            lacks = tuple(p for p in wanted if p not in checker.granted(r, wanted))
            reason = ""
        except _Refused as e:
            lacks, reason = wanted, str(e)
        if lacks:
            missing.append(Missing(r, r.account, lacks, fix=r.grant_command(accounts), reason=reason))
    return missing
