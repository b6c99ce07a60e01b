"""``python -m deployments.demo``: the demo on the embedded defaults (no cloud account needed).

For now it prepares scanpy's ``pbmc68k_reduced`` as counts, validates it against its gene list and
stages it into the configured storage root (``file://<data_dir>/objects`` unless
``STACKFLOWS_STORAGE__ROOT`` says otherwise), then prints where it went.
"""

from __future__ import annotations

import os

# With no PREFECT_API_URL the tasks run against Prefect's ephemeral API, which can take a while to
# start on a busy machine (the default wait is 20 s).
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")  # tasks run here without a flow

from clients.settings import get_settings  # noqa: E402
from deployments.demo_data import prepare_demo_data  # noqa: E402
from tasks.staging import stage_input, validate_input  # noqa: E402


def main() -> None:
    settings = get_settings()
    demo = prepare_demo_data(settings.data_dir / "demo")
    facts = validate_input(str(demo.h5ad), gene_list_uri=str(demo.gene_list), required_obs={"bulk_labels": None})
    staged = stage_input(str(demo.h5ad), facts)
    print(
        f"Demo input: {demo.h5ad} ({staged.shape[0]} cells x {staged.shape[1]} genes, gene overlap {staged.gene_overlap:.0%})"
    )
    print(f"Staged to:  {staged.uri}")


if __name__ == "__main__":
    main()
