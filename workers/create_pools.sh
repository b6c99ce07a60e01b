#!/usr/bin/env bash
# The two work pools, by hand. `python -m deployments.setup local|gcp` does the same (and more:
# blocks, the GPU concurrency limit, deployments) and can be run again safely.
set -euo pipefail
cd "$(dirname "$0")/.."

# Local: flow runs are subprocesses of a worker on this machine.
prefect work-pool create stackflows-local --type process --overwrite

# Cloud Run v2: prefect-gcp's default template with our defaults (workers/job_template.py).
# To bake your image, region and service account into the pool's defaults, regenerate it first:
#   python -c "import json; from workers.job_template import stackflows_template as t; \
#     print(json.dumps(t(image='IMAGE', region='REGION', service_account='SA')))" > /tmp/template.json
prefect work-pool create stackflows-cloud-run --type cloud-run-v2 \
  --base-job-template workers/cloud-run-v2.job-template.json --overwrite

# By hand the pool gets no Secret Manager references for the Prefect key / auth string, no timeout
# derived from your GPU wait settings and no zombie automation: the set-up's gcp path does those
# (docs/deploy.md: "Timeouts that nest", "Zombie runs"). Export the same
# PREFECT_FLOWS_HEARTBEAT_FREQUENCY for the workers as for the set-up that made the automation.

# Workers (the Cloud Run worker needs prefect-gcp and Google credentials that may create Cloud Run
# jobs; its PREFECT_API_URL is injected into every job, so it must be reachable from Cloud Run):
#   prefect worker start --pool stackflows-local
#   prefect worker start --pool stackflows-cloud-run --type cloud-run-v2
