"""Property-based calls generated from the API's own OpenAPI document: none may end in a 5xx.

Driven through schemathesis's Python API (one hypothesis run per operation) rather than its pytest
plugin, whose lazy fixtures do not work with the pytest here.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from tests.api.conftest import TOKEN, ApiServer

OPERATIONS = [
    "POST /runs",
    "GET /runs/{run_id}",
    "POST /runs/{run_id}/cancel",
    "POST /runs/{run_id}/retry",
    "GET /runs/{run_id}/files/{path}",
    "GET /healthz",
]


@pytest.mark.parametrize("label", OPERATIONS)
def test_generated_calls_get_no_server_error(api_server: ApiServer, label: str) -> None:
    schema = schemathesis.openapi.from_url(f"{api_server.url}/openapi.json")
    operations = {op.label: op for op in (result.ok() for result in schema.get_all_operations())}
    assert set(operations) == set(OPERATIONS), "the API's operations changed: update this test"

    @given(case=operations[label].as_strategy())
    @settings(max_examples=25, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    def call(case: schemathesis.Case) -> None:
        case.call_and_validate(
            headers={"Authorization": f"Bearer {TOKEN}"},
            checks=[not_a_server_error, status_code_conformance, response_schema_conformance],
        )

    call()
