"""The whole system on loopback, once per e2e module (deployments.local_stack): a real Prefect
server (SQLite), the deployments from prefect.yaml, a process worker and the API, each a separate
process like on a laptop. Inputs are a small subset of pbmc68k and a tiny untrained STACK
checkpoint, so a run takes seconds of compute."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from deployments.local_stack import LocalStack, running_local_stack
from deployments.processes import wait_until
from tests.small_inputs import Inputs, make_inputs

TOKEN = "e2e-token-0b7d"
RUN_TIMEOUT_S = 300


@dataclass
class System:
    stack: LocalStack
    inputs: Inputs

    def __getattr__(self, name: str):  # data_dir, prefect_url, api(), setup(), processes ...
        return getattr(self.stack, name)

    def request(self, question: str, **overrides: object) -> dict:
        """An analysis request with an explicit plan, so no agent key is needed."""
        h5ad = self.inputs.h5ad.as_uri()
        body = {
            "question": question,
            "prompt_uri": h5ad,
            "query_uri": h5ad,
            "gene_list_uri": self.inputs.gene_list.as_uri(),
            "checkpoint_uri": self.inputs.checkpoint.as_uri(),
            "split_column": "bulk_labels",
            "split_values": ["CD19+ B"],
            "query_obs_filter": {"bulk_labels": ["CD14+ Monocyte"]},
            "num_steps": 2,
        }
        return {**body, **overrides}

    def wait_for_run(self, run_id: str, states: set[str], timeout: float = RUN_TIMEOUT_S) -> dict:
        """Poll GET /runs/{id} until the run's state type is one of ``states``."""
        with self.api() as api:

            def reached() -> dict | None:
                run = api.get(f"/runs/{run_id}").json()
                return run if run["state"] and run["state"]["type"] in states else None

            return wait_until(reached, timeout, f"run {run_id} to reach {states}", watch=self.processes)


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    root = tmp_path_factory.mktemp("e2e")
    data_dir = root / "data"
    inputs = make_inputs(data_dir)
    with running_local_stack(root, data_dir, TOKEN, extra_env=fault_env()) as stack:
        yield System(stack=stack, inputs=inputs)


def fault_env() -> dict[str, str]:
    """Every run fails once, right after its GPU job finished (flows/faults.py): the retry test's fault."""
    return {"STACKFLOWS_FAULTS__FAIL_ONCE_AFTER": '["stack_inference"]'}
