"""A deployment of the analysis flow registered by its parameter schema alone, with no worker.

The API only talks to Prefect's API, so its tests and its load benchmark register this instead of
importing the flow and its science stack; runs stay Scheduled. tests/e2e runs the real flow behind
the real deployment.
"""

from __future__ import annotations

from tasks.request import AnalysisRequest


def analysis_run_signature(request: AnalysisRequest) -> None:
    """The analysis flow's signature: Prefect derives the deployment's parameter schema from it."""


async def register_schema_deployment(deployment: str) -> str:
    """Register ``<flow>/<name>`` with the flow's parameter schema, enforced; returns its id."""
    from prefect import get_client
    from prefect.utilities.callables import parameter_schema

    flow_name, name = deployment.split("/")
    async with get_client() as client:
        flow_id = await client.create_flow_from_name(flow_name)
        deployment_id = await client.create_deployment(
            flow_id=flow_id,
            name=name,
            entrypoint="flows/analysis_run.py:analysis_run",
            parameter_openapi_schema=parameter_schema(analysis_run_signature).model_dump_for_openapi(),
            enforce_parameter_schema=True,
        )
    return str(deployment_id)
