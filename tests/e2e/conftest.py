"""The whole system on loopback, once per e2e session and database (deployments.local_stack): a real
Prefect server, the deployments from prefect.yaml, a process worker and the API, each a separate
process like on a laptop. Inputs are a small subset of pbmc68k and a tiny untrained STACK
checkpoint, so a run takes seconds of compute; the worker knows that checkpoint and gene list as its
defaults, as the demo's worker does, so a run that names no model (the UI form) runs too."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import pytest

from deployments.local_stack import LocalStack, model_env, running_local_stack
from tests.postgres_server import postgres_bin_dir, running_postgres
from tests.small_inputs import Inputs, make_inputs

TOKEN = "e2e-token-0b7d"


@dataclass
class System(LocalStack):
    """The running stack plus the small inputs its runs use."""

    inputs: Inputs | None = None

    def request(self, question: str, **overrides: object) -> dict:
        assert self.inputs is not None
        return self.inputs.request_body(question, **overrides)


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def system(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """The stack on SQLite (the embedded default) and on PostgreSQL (the production database)."""
    root = tmp_path_factory.mktemp(f"e2e-{request.param}")
    data_dir = root / "data"
    inputs = make_inputs(data_dir)
    with ExitStack() as stack_of:
        database_url = None
        if request.param == "postgresql":
            require_postgres()
            database_url = stack_of.enter_context(running_postgres())
        stack = stack_of.enter_context(
            running_local_stack(
                root, data_dir, TOKEN, extra_env={**model_env(inputs.checkpoint, inputs.gene_list), **fault_env()},
                database_url=database_url,
            )
        )
        yield System(**vars(stack), inputs=inputs)


def require_postgres() -> None:
    """Without PostgreSQL installed: skip on a laptop, fail in CI (where .ci/run installs it)."""
    if postgres_bin_dir() is None:
        message = "PostgreSQL is not installed (apt-get install -y postgresql); .ci/run installs it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def fault_env() -> dict[str, str]:
    """Every run fails once, right after its GPU job finished (flows/faults.py): the retry test's fault."""
    return {"STACKFLOWS_FAULTS__FAIL_ONCE_AFTER": '["stack_inference"]'}
