"""``python -m deployments.setup local|gcp``: everything a Prefect server needs to run analyses.

One environment at a time, in this order: the work pool, the global concurrency limit that keeps
GPU jobs from piling up, the automation that marks zombie runs Crashed (deployments/automations.py),
the blocks (result storage, the Anthropic key as a Secret), the demo data
and untrained checkpoint the local nightly canary reads (under the data directory, named in its
request by absolute path), then the deployments from ``prefect.yaml`` (through ``prefect deploy``).

Running it again changes nothing: each piece is compared with what the server has and written only
when it differs. Deployments carry a fingerprint of their configuration (``prefect.yaml``, the
deploy-time environment variables it names, this checkout's path, the flow code's signature files)
as their version, and are redeployed only when it changes, because every redeploy replaces the
schedules and deletes the runs already scheduled.

``gcp --check`` first verifies each service account's permissions (deployments/gcp_check.py) and
stops with the gcloud commands that grant what is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from prefect import get_client
from prefect.blocks.core import Block
from prefect.blocks.system import Secret
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
    WorkPoolCreate,
    WorkPoolUpdate,
)
from prefect.exceptions import ObjectNotFound
from prefect.filesystems import LocalFileSystem
from prefect.settings import get_current_settings

from clients.batch.settings import GPU_CONCURRENCY_LIMIT
from clients.settings import (
    Settings,
    flow_run_timeout_s,
    get_settings,
    timeout_problems,
)
from deployments.automations import ensure_zombie_automation, heartbeat_s

Environment = Literal["local", "gcp"]
Action = Literal["created", "updated", "unchanged"]

PROJECT_DIR = Path(__file__).resolve().parents[1]
FLOW_NAME = "analysis-run"
LOCAL_POOL = "stackflows-local"
CLOUD_POOL = "stackflows-cloud-run"
DEPLOYMENTS: dict[Environment, list[str]] = {
    "local": ["local", "nightly-canary"],
    "gcp": ["cloud-run", "nightly-canary-cloud"],
}
GPU_LIMIT_SLOTS = 2
RESULTS_BLOCK = "stackflows-results"
ANTHROPIC_SECRET_BLOCK = "anthropic-api-key"
VERSION_VAR = "STACKFLOWS_DEPLOY_VERSION"  # prefect.yaml's deployments take their version from it
CANARY_DIR_VAR = "STACKFLOWS_CANARY_DIR"  # prefect.yaml's local canary reads its inputs from there
GCP_DEPLOY_ENV = ("STACKFLOWS_FLOW_IMAGE", "STACKFLOWS_GCP_REGION", "STACKFLOWS_FLOW_SERVICE_ACCOUNT")
# Secret Manager secrets (latest version) that Cloud Run injects into flow runs instead of plain env.
API_KEY_SECRET_VAR = "STACKFLOWS_PREFECT_API_KEY_SECRET"
AUTH_STRING_SECRET_VAR = "STACKFLOWS_PREFECT_AUTH_STRING_SECRET"
DEFAULT_API_KEY_SECRET = "prefect-api-key"
DEFAULT_AUTH_STRING_SECRET = "prefect-api-auth-string"
PLACEHOLDERS = ("PROJECT", "REGION", "…", "...")  # what docs and defaults write where a value goes
# Settings sections a Cloud Run flow run needs; never the API's (its token) nor injected faults.
FLOW_RUN_SECTIONS = ("storage", "model", "batch", "agent", "ocr")


class SetupError(RuntimeError):
    """Set-up cannot go on; the message says what is missing and how to fix it."""


@dataclass(frozen=True)
class Change:
    kind: str
    name: str
    action: Action

    def __str__(self) -> str:
        return f"{self.action:>9}  {self.kind} {self.name}"


# --- work pools ---------------------------------------------------------------------------------


async def ensure_work_pool(client: PrefectClient, name: str, pool_type: str, template: dict[str, Any]) -> Change:
    try:
        pool = await client.read_work_pool(name)
    except ObjectNotFound:
        await client.create_work_pool(WorkPoolCreate(name=name, type=pool_type, base_job_template=template))
        return Change("work pool", name, "created")
    if pool.type != pool_type:
        raise SetupError(
            f"work pool '{name}' exists with type '{pool.type}', not '{pool_type}': delete it "
            f"(prefect work-pool delete {name}) and run the set-up again"
        )
    if pool.base_job_template == template:
        return Change("work pool", name, "unchanged")
    await client.update_work_pool(name, WorkPoolUpdate(base_job_template=template))
    return Change("work pool", name, "updated")


def local_pool_template() -> dict[str, Any]:
    from prefect.workers.process import ProcessWorker

    return ProcessWorker.get_default_base_job_template()


def cloud_pool_template(settings: Settings) -> dict[str, Any]:
    from workers.job_template import stackflows_template

    api_key_secret, auth_string_secret = prefect_secrets()
    return stackflows_template(
        image=os.environ["STACKFLOWS_FLOW_IMAGE"],
        region=os.environ["STACKFLOWS_GCP_REGION"],
        service_account=os.environ["STACKFLOWS_FLOW_SERVICE_ACCOUNT"],
        env=flow_run_env(settings),
        timeout_s=flow_run_timeout_s(settings.batch, settings.flow_run_margin_s),
        heartbeat_s=heartbeat_s(),
        api_key_secret=api_key_secret,
        auth_string_secret=auth_string_secret,
    )


def prefect_secrets() -> tuple[str | None, str | None]:
    """The Secret Manager secrets that carry the Prefect API key and auth string into flow runs.

    The Cloud Run worker passes its own ``PREFECT_API_KEY`` / ``PREFECT_API_AUTH_STRING`` to every job
    as plain environment variables unless the pool names a secret for them (prefect-gcp then drops
    the plain one): with a key or auth string in this shell, a secret is named (its own variable, or
    the default name) and must hold the same value."""
    current = get_current_settings().api
    api_key = os.environ.get(API_KEY_SECRET_VAR) or (DEFAULT_API_KEY_SECRET if current.key else None)
    auth = os.environ.get(AUTH_STRING_SECRET_VAR) or (DEFAULT_AUTH_STRING_SECRET if current.auth_string else None)
    return api_key, auth


def flow_run_env(settings: Settings) -> dict[str, str]:
    """The settings a Cloud Run flow run needs, as ``STACKFLOWS_*`` variables (only non-defaults)."""
    env: dict[str, str] = {}
    for section in FLOW_RUN_SECTIONS:
        values = getattr(settings, section).model_dump(mode="json", exclude_defaults=True)
        for field, value in values.items():
            key = f"STACKFLOWS_{section.upper()}__{field.upper()}"
            env[key] = value if isinstance(value, str) else json.dumps(value)
    env["STACKFLOWS_BATCH__BACKEND"] = "cloud"
    env["STACKFLOWS_BATCH__RESULT_STORAGE"] = f"gcs-bucket/{RESULTS_BLOCK}"
    env["PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK"] = f"gcs-bucket/{RESULTS_BLOCK}"
    if os.environ.get("ANTHROPIC_API_KEY"):  # saved as a Secret block by the set-up, read by the agent
        env["STACKFLOWS_AGENT__API_KEY_SECRET_BLOCK"] = ANTHROPIC_SECRET_BLOCK
    return env


# --- concurrency --------------------------------------------------------------------------------


def gpu_limit_slots() -> int:
    """The GPU limit's slots: GPU_LIMIT_SLOTS, or more when one sharded round needs more
    (``STACKFLOWS_BATCH__MAX_PARALLEL_SHARDS``): Prefect refuses a holder that asks for more slots than
    the limit has, so a sharded round could never start."""
    return max(GPU_LIMIT_SLOTS, get_settings().batch.max_parallel_shards)


async def ensure_gpu_limit(client: PrefectClient, slots: int | None = None) -> Change:
    """A global concurrency limit the GPU job tasks take a slot of, so jobs queue instead of piling up."""
    slots = gpu_limit_slots() if slots is None else slots
    try:
        limit = await client.read_global_concurrency_limit_by_name(GPU_CONCURRENCY_LIMIT)
    except ObjectNotFound:
        await client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=GPU_CONCURRENCY_LIMIT, limit=slots)
        )
        return Change("concurrency limit", GPU_CONCURRENCY_LIMIT, "created")
    if limit.limit == slots and limit.active:
        return Change("concurrency limit", GPU_CONCURRENCY_LIMIT, "unchanged")
    await client.update_global_concurrency_limit(
        GPU_CONCURRENCY_LIMIT, GlobalConcurrencyLimitUpdate(limit=slots, active=True)
    )
    return Change("concurrency limit", GPU_CONCURRENCY_LIMIT, "updated")


# --- blocks -------------------------------------------------------------------------------------


def _block_data(block: Block) -> Any:
    return _public(block.model_dump(mode="json", context={"include_secrets": True}))


def _public(data: Any) -> Any:
    """Without the ``_block_document_*`` keys, which differ between a saved block and a new one."""
    if isinstance(data, dict):
        return {k: _public(v) for k, v in data.items() if not k.startswith("_")}
    return data


async def ensure_block(block: Block, name: str) -> Change:
    kind = f"{block.get_block_type_slug()} block"
    try:
        existing = await type(block).aload(name)
    except ValueError:  # Prefect's "Unable to find block document named ..."
        await block.save(name)
        return Change(kind, name, "created")
    if _block_data(existing) == _block_data(block):
        return Change(kind, name, "unchanged")
    await block.save(name, overwrite=True)
    return Change(kind, name, "updated")


def result_storage_block(environment: Environment, settings: Settings) -> Block:
    if environment == "local":
        return LocalFileSystem(basepath=str((settings.data_dir / "prefect-results").resolve()))
    from prefect_gcp import GcpCredentials, GcsBucket

    bucket, _, prefix = settings.storage_root.removeprefix("gs://").partition("/")
    return GcsBucket(
        bucket=bucket,
        bucket_folder="/".join(p for p in (prefix, "prefect-results") if p),
        gcp_credentials=GcpCredentials(project=settings.storage.project),
    )


# --- deployments --------------------------------------------------------------------------------


def canary_data_dir(settings: Settings) -> Path:
    """Where the local set-up puts the canary's inputs: inside the data directory, so the flow's
    allowed-roots check admits them, and absolute, so no working directory changes what they name."""
    return (settings.data_dir / "demo").resolve()


def deploy_variables(environment: Environment, settings: Settings) -> dict[str, str]:
    """The deploy-time variables of ``prefect.yaml`` that the set-up provides itself."""
    return {CANARY_DIR_VAR: str(canary_data_dir(settings))} if environment == "local" else {}


def prepare_canary_inputs(directory: Path) -> None:
    """The demo h5ad, its gene list and an untrained checkpoint over those genes (the canary's model)."""
    from deployments.demo_data import prepare_demo_checkpoint, prepare_demo_data

    demo = prepare_demo_data(directory)
    prepare_demo_checkpoint(directory, demo.gene_list)


def deployment_fingerprint(project_dir: Path = PROJECT_DIR, variables: Mapping[str, str] | None = None) -> str:
    """Changes whenever a redeploy would register something different (``variables`` over the environment)."""
    values = {**os.environ, **(variables or {})}
    prefect_yaml = (project_dir / "prefect.yaml").read_text()
    digest = hashlib.sha256(prefect_yaml.encode())
    for var in sorted(set(re.findall(r"\{\{\s*\$(\w+)\s*\}\}", prefect_yaml)) - {VERSION_VAR}):
        digest.update(f"{var}={values.get(var, '')}".encode())
    digest.update(str(project_dir.resolve()).encode())
    for path in sorted((project_dir / "flows").glob("*.py")):  # the flow's signature and parameter models
        digest.update(path.read_bytes())
    return "setup-" + digest.hexdigest()[:16]


async def ensure_deployments(
    client: PrefectClient, environment: Environment, project_dir: Path, variables: Mapping[str, str] | None = None
) -> list[Change]:
    names = DEPLOYMENTS[environment]
    fingerprint = deployment_fingerprint(project_dir, variables)
    existing: dict[str, Any] = {}
    for name in names:
        try:
            existing[name] = await client.read_deployment_by_name(f"{FLOW_NAME}/{name}")
        except ObjectNotFound:
            pass
    if all(name in existing and existing[name].version == fingerprint for name in names):
        return [Change("deployment", f"{FLOW_NAME}/{name}", "unchanged") for name in names]
    run_prefect_deploy(names, fingerprint, project_dir, variables)
    return [Change("deployment", f"{FLOW_NAME}/{name}", "updated" if name in existing else "created") for name in names]


def run_prefect_deploy(
    names: list[str], version: str, project_dir: Path, variables: Mapping[str, str] | None = None
) -> None:
    """``prefect deploy`` from ``prefect.yaml``: the same code path as deploying by hand."""
    command = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--prefect-file", "prefect.yaml"]
    for name in names:
        command += ["--name", f"{FLOW_NAME}/{name}"]
    env = {
        **os.environ, **(variables or {}),
        "PREFECT_API_URL": get_current_settings().api.url or "", VERSION_VAR: version,
    }
    done = subprocess.run(command, cwd=project_dir, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-25:])
        raise SetupError(f"prefect deploy failed for {names}:\n{tail}")


async def activate_schedules(client: PrefectClient, names: list[str]) -> list[Change]:
    """Cloud deployments ship with schedules off (so `prefect deploy --all` on a laptop schedules no
    Cloud Run runs); the gcp set-up switches them on."""
    changes = []
    for name in names:
        deployment = await client.read_deployment_by_name(f"{FLOW_NAME}/{name}")
        for schedule in deployment.schedules:
            if not schedule.active:
                await client.update_deployment_schedule(deployment.id, schedule.id, active=True)
                changes.append(Change("schedule", f"{FLOW_NAME}/{name}", "updated"))
    return changes


# --- the whole set-up ---------------------------------------------------------------------------


def check_gcp_permissions(settings: Settings) -> None:
    """``--check``: every account's permissions, through testIamPermissions; refuses what is missing."""
    from deployments.gcp_check import (
        accounts_from_env,
        check_permissions,
        endpoints_from_env,
    )

    check_environment("gcp", settings)
    missing = check_permissions(accounts_from_env(settings), endpoints_from_env())
    if missing:
        raise SetupError(
            "service accounts lack permissions; grant them and run again:\n"
            + "\n".join(m.describe() for m in missing)
        )
    print("permissions   every service account has what it needs")


def check_environment(environment: Environment, settings: Settings) -> None:
    if not get_current_settings().api.url:
        raise SetupError("PREFECT_API_URL is not set: point it at the Prefect server to set up")
    if get_current_settings().flows.heartbeat_frequency is None:
        raise SetupError(
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY is null (heartbeats off): set it to 30 or more, here and for "
            "the workers, so the zombie automation can tell a dead run from a live one"
        )
    if environment == "gcp":
        missing = [var for var in GCP_DEPLOY_ENV if not os.environ.get(var)]
        if missing:
            raise SetupError(f"the gcp set-up needs {', '.join(missing)} (see docs/deploy.md)")
        if not settings.storage_root.startswith("gs://"):
            raise SetupError(
                "the gcp set-up needs STACKFLOWS_STORAGE__ROOT=gs://bucket/prefix: Cloud Run flow runs "
                "and their retries must share results and outputs"
            )
        check_batch_job(settings)
        problems = timeout_problems(settings) + deployment_timeout_problems(settings)
        if problems:
            raise SetupError("the timeouts do not nest:\n- " + "\n- ".join(problems))


def check_batch_job(settings: Settings) -> None:
    """Refuse a Batch job every run would start a GPU VM for and that could not pull its image."""
    batch = settings.batch
    if not batch.project or any(p in batch.project for p in PLACEHOLDERS):
        raise SetupError(
            f"STACKFLOWS_BATCH__PROJECT is {batch.project!r}: set it to the project that runs the GPU jobs"
        )
    default_image = type(batch).model_fields["image"].default
    if not batch.image or batch.image == default_image or any(p in batch.image for p in PLACEHOLDERS):
        raise SetupError(
            f"STACKFLOWS_BATCH__IMAGE is {batch.image!r}, a placeholder: every run would start a GPU VM that "
            "cannot pull it. Set it to the pushed GPU job image (e.g. "
            f"{os.environ.get('STACKFLOWS_GCP_REGION', 'us-central1')}-docker.pkg.dev/{batch.project}/stackflows/stack-job:0.1.0)"
        )


def deployment_timeout_problems(settings: Settings, project_dir: Path = PROJECT_DIR) -> list[str]:
    """A cloud deployment in prefect.yaml whose own ``timeout`` job variable is below the derived one."""
    import yaml

    needed = flow_run_timeout_s(settings.batch, settings.flow_run_margin_s)
    config = yaml.safe_load((project_dir / "prefect.yaml").read_text())
    problems = []
    for deployment in config.get("deployments", []):
        timeout = ((deployment.get("work_pool") or {}).get("job_variables") or {}).get("timeout")
        if deployment["name"] in DEPLOYMENTS["gcp"] and timeout is not None and int(timeout) < needed:
            problems.append(
                f"prefect.yaml's deployment {deployment['name']} sets timeout: {timeout}, below the "
                f"{needed} s its GPU waits need: remove it (the pool's derived default applies) or raise it"
            )
    return problems


async def setup(environment: Environment, settings: Settings | None = None, project_dir: Path = PROJECT_DIR) -> list[Change]:
    """Bring the Prefect server to the state ``environment`` needs; returns what was done."""
    settings = settings or get_settings()
    check_environment(environment, settings)
    changes: list[Change] = []
    async with get_client() as client:
        if environment == "local":
            changes.append(await ensure_work_pool(client, LOCAL_POOL, "process", local_pool_template()))
        else:
            changes.append(await ensure_work_pool(client, CLOUD_POOL, "cloud-run-v2", cloud_pool_template(settings)))
        changes.append(await ensure_gpu_limit(client))
        changes.append(Change("automation", *await ensure_zombie_automation(client)))
        changes.append(await ensure_block(result_storage_block(environment, settings), RESULTS_BLOCK))
        if os.environ.get("ANTHROPIC_API_KEY"):
            changes.append(await ensure_block(Secret(value=os.environ["ANTHROPIC_API_KEY"]), ANTHROPIC_SECRET_BLOCK))
        if environment == "local":
            prepare_canary_inputs(canary_data_dir(settings))
        changes += await ensure_deployments(client, environment, project_dir, deploy_variables(environment, settings))
        if environment == "gcp":
            changes += await activate_schedules(client, DEPLOYMENTS["gcp"])
    return changes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("environment", choices=["local", "gcp"])
    parser.add_argument(
        "--check", action="store_true",
        help="gcp: verify every service account's permissions (testIamPermissions) before setting up",
    )
    args = parser.parse_args()
    try:
        if args.check:
            if args.environment != "gcp":
                raise SetupError("--check verifies Google Cloud permissions: use it with gcp")
            check_gcp_permissions(get_settings())
        changes = asyncio.run(setup(args.environment))
    except SetupError as e:
        sys.exit(f"set-up failed: {e}")
    for change in changes:
        print(change)


if __name__ == "__main__":
    main()
