"""The local stack byte-compiles the checkout before it starts, so a flow run, a new process each, loads
the analysis flow's modules instead of compiling them from source, also where PYTHONDONTWRITEBYTECODE
(set on CI machines and in containers) keeps Python from writing the caches itself."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from deployments.local_stack import compile_project_code


def _loaded_from(source: Path) -> str:
    """Where a process that writes no caches took the code of ``source`` (a module under its cwd) from."""
    module = ".".join(source.with_suffix("").relative_to(source.parents[1]).parts)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(
        [sys.executable, "-v", "-c", f"import {module}"], cwd=source.parents[1], env=env, capture_output=True, text=True, check=True
    )
    cached = importlib.util.cache_from_source(str(source))
    origins = [line.removeprefix("# code object from ").strip("'") for line in done.stderr.splitlines()
               if line.startswith("# code object from")]
    (origin,) = [o for o in origins if o in (str(source), cached)]
    return origin


def test_a_flow_process_loads_the_compiled_code_where_python_writes_no_caches(tmp_path: Path) -> None:
    package = tmp_path / "flows"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "run.py").write_text("VALUE = 1\n")
    assert _loaded_from(package / "run.py") == str(package / "run.py")  # compiled from source, every time

    compile_project_code(tmp_path)  # the packages this root lacks are no error

    assert _loaded_from(package / "run.py") == importlib.util.cache_from_source(str(package / "run.py"))
