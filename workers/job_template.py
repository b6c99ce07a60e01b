"""The Cloud Run v2 base job template for the ``stackflows-cloud-run`` work pool.

Built from prefect-gcp's own default (``CloudRunWorkerV2.get_default_base_job_template()``, the same
as ``prefect work-pool get-default-base-job-template --type cloud-run-v2``) and changed only where a
flow run of ours needs it:

- defaults sized for the analysis flow (2 vCPU, 4 GiB: h5ad validation reads the data into memory)
  and a job timeout derived from the GPU wait (``clients.settings.flow_run_timeout_s``: a wait per
  round plus a margin), so Cloud Run never kills a flow still waiting for its Cloud Batch job;
- ``cpu`` and ``memory`` must be Kubernetes-style quantities (``"2"``, ``"1000m"``, ``"4Gi"``): the
  pattern lets the server refuse ``memory: 4GB`` at deploy time instead of Cloud Run at run time;
- ``max_retries`` 0: Prefect retries flow runs; a Cloud Run retry would start a second process for a
  flow run Prefect already marked crashed;
- flow-run heartbeats (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``) on, so the set-up's automation marks
  a run Crashed when its container dies with it (``deployments/automations.py``);
- the image, region, service account, the run's environment and the Secret Manager secrets that
  carry the Prefect API key / auth string (``prefect_api_key_secret``,
  ``prefect_api_auth_string_secret``: prefect-gcp then drops the plain variable) come from settings
  when the pool is created (``python -m deployments.setup gcp``), so deployments need not repeat them.

There is no GPU variable: the flow itself needs none (the GPU work is a Cloud Batch job).

    python -m workers.job_template > workers/cloud-run-v2.job-template.json
"""

from __future__ import annotations

import copy
import json
from typing import Any

from prefect.settings.models.flows import FlowsSettings
from prefect_gcp.workers.cloud_run_v2 import CloudRunWorkerV2

from clients.batch.settings import BatchSettings
from clients.settings import flow_run_timeout_s

POOL_TYPE = CloudRunWorkerV2.type  # "cloud-run-v2"
DEFAULT_CPU = "2"
DEFAULT_MEMORY = "4Gi"
DEFAULT_TIMEOUT_S = flow_run_timeout_s(BatchSettings())  # the default settings' GPU waits plus the margin
# Heartbeats the zombie automation watches (deployments/automations.py); Prefect's own default unless set.
PREFECT_HEARTBEAT_DEFAULT_S: int = FlowsSettings.model_fields["heartbeat_frequency"].default
CPU_PATTERN = r"^[0-9]+(\.[0-9]+)?m?$"
MEMORY_PATTERN = r"^[0-9]+(Ki|Mi|Gi|Ti|k|M|G|T)?$"
FLOW_ENV = {
    "PYTHONUNBUFFERED": "1",
    # the flow's own loggers reach the Prefect UI
    "PREFECT_LOGGING_EXTRA_LOGGERS": "clients,tasks,flows",
}


def prefect_gcp_default() -> dict[str, Any]:
    """prefect-gcp's default template for this installed version, untouched."""
    return CloudRunWorkerV2.get_default_base_job_template()


def stackflows_template(
    image: str | None = None,
    region: str | None = None,
    service_account: str | None = None,
    env: dict[str, str] | None = None,
    timeout_s: int | None = None,
    heartbeat_s: int | None = None,
    api_key_secret: str | None = None,
    auth_string_secret: str | None = None,
) -> dict[str, Any]:
    """prefect-gcp's default with our defaults; arguments left None keep the default's value.

    ``api_key_secret`` / ``auth_string_secret`` name Secret Manager secrets (latest version) that
    Cloud Run injects as ``PREFECT_API_KEY`` / ``PREFECT_API_AUTH_STRING``."""
    template = copy.deepcopy(prefect_gcp_default())
    variables = template["variables"]["properties"]
    variables["cpu"].update(default=DEFAULT_CPU, pattern=CPU_PATTERN)
    variables["memory"].update(default=DEFAULT_MEMORY, pattern=MEMORY_PATTERN)
    variables["timeout"]["default"] = timeout_s or DEFAULT_TIMEOUT_S
    variables["max_retries"]["default"] = 0
    heartbeat = {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(heartbeat_s or PREFECT_HEARTBEAT_DEFAULT_S)}
    variables["env"]["default"] = {**FLOW_ENV, **heartbeat, **(env or {})}
    if image:
        variables["image"]["default"] = image
    if region:
        variables["region"]["default"] = region
    if service_account:
        variables["service_account_name"]["default"] = service_account
    if api_key_secret:
        variables["prefect_api_key_secret"]["default"] = {"secret": api_key_secret, "version": "latest"}
    if auth_string_secret:
        variables["prefect_api_auth_string_secret"]["default"] = {"secret": auth_string_secret, "version": "latest"}
    return template


def main() -> None:
    print(json.dumps(stackflows_template(), indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
