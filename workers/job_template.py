"""The Cloud Run v2 base job template for the ``stackflows-cloud-run`` work pool.

Built from prefect-gcp's own default (``CloudRunWorkerV2.get_default_base_job_template()``, the same
as ``prefect work-pool get-default-base-job-template --type cloud-run-v2``) and changed only where a
flow run of ours needs it:

- defaults sized for the analysis flow (2 vCPU, 4 GiB: h5ad validation reads the data into memory)
  and a 6 h job timeout (the flow waits for its GPU job, which Cloud Batch runs);
- ``cpu`` and ``memory`` must be Kubernetes-style quantities (``"2"``, ``"1000m"``, ``"4Gi"``): the
  pattern lets the server refuse ``memory: 4GB`` at deploy time instead of Cloud Run at run time;
- ``max_retries`` 0: Prefect retries flow runs; a Cloud Run retry would start a second process for a
  flow run Prefect already marked crashed;
- the image, region, service account and the run's environment come from settings when the pool is
  created (``python -m deployments.setup gcp``), so deployments need not repeat them.

There is no GPU variable: the flow itself needs none (the GPU work is a Cloud Batch job).

    python -m workers.job_template > workers/cloud-run-v2.job-template.json
"""

from __future__ import annotations

import copy
import json
from typing import Any

from prefect_gcp.workers.cloud_run_v2 import CloudRunWorkerV2

POOL_TYPE = CloudRunWorkerV2.type  # "cloud-run-v2"
DEFAULT_CPU = "2"
DEFAULT_MEMORY = "4Gi"
DEFAULT_TIMEOUT_S = 6 * 3600
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
) -> dict[str, Any]:
    """prefect-gcp's default with our defaults; arguments left None keep the default's value."""
    template = copy.deepcopy(prefect_gcp_default())
    variables = template["variables"]["properties"]
    variables["cpu"].update(default=DEFAULT_CPU, pattern=CPU_PATTERN)
    variables["memory"].update(default=DEFAULT_MEMORY, pattern=MEMORY_PATTERN)
    variables["timeout"]["default"] = DEFAULT_TIMEOUT_S
    variables["max_retries"]["default"] = 0
    variables["env"]["default"] = {**FLOW_ENV, **(env or {})}
    if image:
        variables["image"]["default"] = image
    if region:
        variables["region"]["default"] = region
    if service_account:
        variables["service_account_name"]["default"] = service_account
    return template


def main() -> None:
    print(json.dumps(stackflows_template(), indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
