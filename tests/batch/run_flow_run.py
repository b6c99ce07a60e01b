"""Runs an existing stack_inference flow run in this process, the way a worker's subprocess does.

    python tests/batch/run_flow_run.py <flow-run-id>
"""

from __future__ import annotations

import sys
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.flow_engine import run_flow

from flows.stack_inference import stack_inference

if __name__ == "__main__":
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(UUID(sys.argv[1]))
    run_flow(stack_inference, flow_run=flow_run, parameters=flow_run.parameters, return_type="state")
