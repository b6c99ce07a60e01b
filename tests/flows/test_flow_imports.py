"""What a flow-run process loads before the analysis run's first task.

Every module imported with ``flows.analysis_run`` is paid for before the first task starts, on
every run; modules only the grounding, the report or an optional path (Claude, OCR, ``gs://``) use
wait for that step (the round preloads the grounding's while its GPU job runs).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Heavy modules the path to the first task does not use, with who uses them.
NOT_BEFORE_THE_FIRST_TASK = {
    "scipy.stats": "grounding (BH q-values), preloaded during the GPU job",
    "pyarrow.parquet": "grounding (the job's de.parquet), preloaded during the GPU job",
    "decoupler": "grounding (ORA), preloaded during the GPU job",
    "numba": "decoupler",
    "matplotlib": "the report's plots",
    "anthropic": "Claude, only with a key",
    "pypdfium2": "OCR, only for a request with documents",
    "PIL": "OCR, only for a request with documents",
    "google.cloud.storage": "gs:// storage, only for gs:// URIs (the staging's retry check imports it on a failure)",
    "grpc": "google-api-core's errors, with gs:// storage",
}


def test_importing_the_analysis_flow_loads_nothing_the_first_task_does_not_need() -> None:
    probe = (
        "import json, sys; import flows.analysis_run; "
        f"print(json.dumps(sorted(m for m in {sorted(NOT_BEFORE_THE_FIRST_TASK)!r} if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == [], {name: NOT_BEFORE_THE_FIRST_TASK[name] for name in loaded}


def test_what_the_first_subflow_imports_is_imported_on_a_thread_and_a_failure_is_left_to_its_user() -> None:
    probe = (
        "import json, sys; from flows.background_imports import SUBFLOW_START, import_in_background; "
        "before = [m in sys.modules for m in SUBFLOW_START]; "
        "import_in_background((*SUBFLOW_START, 'no_such_module_here')).join(); "
        "print(json.dumps([before, [m in sys.modules for m in SUBFLOW_START]]))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    before, after = json.loads(out.stdout.strip().splitlines()[-1])
    assert not any(before) and all(after)


def test_prefect_still_serialises_a_subflows_parameters_with_what_is_imported_for_it() -> None:
    """If Prefect stops using fastapi's encoder there, the background import only costs time: say so."""
    import inspect

    from prefect.flows import Flow

    source = inspect.getsource(Flow.serialize_parameters)
    from flows.background_imports import SUBFLOW_START

    assert all(f"from {module} import" in source for module in SUBFLOW_START)
